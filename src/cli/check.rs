//! The checking commands: `status` (keyless monitoring, with the monitoring-plugin exit
//! codes and a Prometheus file) and `verify` (`--storage` without a key; `--data`,
//! `--against` with it).

use super::*;

pub(super) fn status(config: Option<&Path>, a: StatusArgs) -> Result<u8> {
    use coffer::status::{self, Health};
    // Whatever stops the check is UNKNOWN (3) for the monitoring system, not an error.
    let json = a.json;
    let unknown = |e: anyhow::Error| -> Result<u8> {
        let message = error_text(&e);
        if json {
            let out = serde_json::json!({"health": "UNKNOWN", "exit_status": 3,
                "sources": [], "unreadable": [{"target": null, "error": message}]});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("COFFER UNKNOWN - {}", output::escape_line(&message));
        }
        Ok(Health::Unknown.exit_status())
    };
    let (cfg, targets) = match read_targets(config, a.target.as_deref()) {
        Ok(t) => t,
        Err(e) => return unknown(e),
    };
    let trust = match trust(cfg.as_ref(), &a.trust) {
        Ok(t) => t,
        Err(e) => return unknown(e),
    };
    let mut opts = status::StatusOptions::new();
    opts.max_age = a.max_age;
    opts.warn_age = a.warn_age;
    let now = chrono::Utc::now();
    let mut sources = Vec::new();
    let mut unreadable = Vec::new();
    let mut up = Vec::new();
    let mut requests = Vec::new();
    for t in &targets {
        let mut opts = opts.clone();
        if let Some(c) = &cfg {
            for s in c.sources.values() {
                if let Some(m) = s.max_age {
                    opts.max_age_of.insert(s.name.clone(), m);
                }
                if s.targets.contains(&t.name) {
                    opts.expected.push((c.host.clone(), s.name.clone()));
                }
            }
        }
        // One host and source at a time: memory holds one group's runs, however many
        // hosts share the target.
        let checked = Store::open(t, false).map(|s| s.reader()).and_then(|store| {
            // The newest run each check saw is kept in the config's state directory:
            // without one, rollbacks cannot be told.
            let mut seen = match &cfg {
                Some(c) => Some(coffer::chain::Seen::open(&c.state_dir)?),
                None => None,
            };
            let mut compare = match &mut seen {
                Some(seen) => {
                    if a.accept_rollback {
                        seen.forget(&t.url)?;
                    }
                    Some(seen.begin(&t.url)?)
                }
                None => None,
            };
            let mut found: Vec<status::SourceStatus> = Vec::new();
            coffer::chain::histories(
                &store,
                &trust,
                |_, _| true,
                |host, source, mut h| {
                    if let Some(c) = &mut compare {
                        h.findings.extend(c.compare(&h.runs, &h.tombstones));
                    }
                    let expected = opts
                        .expected
                        .iter()
                        .any(|(eh, es)| eh == host && es == source);
                    if !h.runs.is_empty() || !h.findings.is_empty() || expected {
                        let runs: Vec<&coffer::RunInfo> = h.runs.iter().collect();
                        let mut s = status::of_source(&t.name, host, source, &runs, now, &opts);
                        s.add_chain_findings(&h.findings);
                        found.push(s);
                    }
                    Ok(())
                },
            )?;
            // Sources expected here without a run, and those an earlier check saw of
            // which nothing is left.
            for (host, source) in &opts.expected {
                if !found.iter().any(|s| (&s.host, &s.source) == (host, source)) {
                    found.push(status::of_source(&t.name, host, source, &[], now, &opts));
                }
            }
            if let Some(c) = compare {
                for f in c.finish()? {
                    let i = match found
                        .iter()
                        .position(|s| (&s.host, &s.source) == (&f.host, &f.source))
                    {
                        Some(i) => i,
                        None => {
                            found.push(status::of_source(
                                &t.name,
                                &f.host,
                                &f.source,
                                &[],
                                now,
                                &opts,
                            ));
                            found.len() - 1
                        }
                    };
                    found[i].add_chain_findings(std::slice::from_ref(&f));
                }
            }
            found.sort_by(|a, b| (&a.host, &a.source).cmp(&(&b.host, &b.source)));
            Ok((found, store.requests()))
        });
        match checked {
            Ok((mut found, made)) => {
                up.push((t.name.clone(), true));
                requests.push(serde_json::json!({"target": t.name, "requests": made}));
                // The config's own sources: their recipients and signers must stay
                // usable.
                if let Some(c) = &cfg {
                    for s in found.iter_mut().filter(|s| s.host == c.host) {
                        if let Some(src) = c.sources.get(&s.source) {
                            s.check_recipients(&src.recipients);
                            s.check_signers(&src.signers);
                        }
                    }
                }
                sources.extend(found);
            }
            Err(e) => {
                up.push((t.name.clone(), false));
                unreadable.push((t.name.clone(), e.to_string()));
            }
        }
    }
    let health = status::overall(&sources, unreadable.len());
    if let Some(file) = &a.prometheus {
        write_atomically(file, status::prometheus(&sources, &up).as_bytes())?;
    }
    if json {
        let out = serde_json::json!({
            "health": health, "exit_status": health.exit_status(), "sources": sources,
            "requests": requests,
            "unreadable": unreadable.iter()
                .map(|(t, e)| serde_json::json!({"target": t, "error": e}))
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", output::status_report(health, &sources, &unreadable));
    }
    Ok(health.exit_status())
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed over
/// it: a reader sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".coffer-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", tmp.path().display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

pub(super) fn verify(config: Option<&Path>, a: VerifyArgs) -> Result<u8> {
    let (cfg, targets) = read_targets(config, a.target.as_deref())?;
    let trust = trust(cfg.as_ref(), &a.trust)?;
    let tmp_dir = match &cfg {
        Some(c) => c.state_dir.join("tmp"),
        None => std::env::temp_dir(),
    };
    let decryptor = if a.data || a.against.is_some() {
        Some(super::secret_key(&a.key)?)
    } else {
        None
    };
    let mut all = Vec::new();
    let mut data_reports = Vec::new();
    let mut against_reports = Vec::new();
    for t in &targets {
        let store = Store::open(t, false)?.reader();
        if let (Some(d), Some(root)) = (&decryptor, &a.against) {
            if a.run.is_none() && a.source.is_none() {
                bail!(
                    "--against compares one run: give --source S (its newest run, or the \
                     newest --at WHEN) or --run ID"
                );
            }
            let chosen = MetafileSource::Run {
                host: a.host.clone(),
                source: a.source.clone(),
                id: a.run.clone(),
                at: a.at,
            };
            let bar = Bar::new("verify", a.json);
            let r =
                coffer::verify::verify_against(&store, &chosen, d, root, &tmp_dir, &trust, &bar)?;
            if !a.json {
                for p in &r.problems {
                    eprintln!(
                        "coffer verify: {}: {}",
                        p.path
                            .as_deref()
                            .map_or_else(String::new, output::escape_line),
                        output::escape_line(&p.message)
                    );
                }
                println!(
                    "{}: verify --against {}: {}: {} entries, {} the same, {} differences",
                    store.name(),
                    root.display(),
                    r.run,
                    r.entries,
                    r.same,
                    r.differences
                );
            }
            against_reports.push(r);
        } else if let Some(d) = decryptor.as_ref().filter(|_| a.data) {
            let coverage = match (a.sample, &cfg) {
                (None, _) => None,
                (Some(_), Some(c)) => Some(coffer::verify::Coverage::open(&c.state_dir, &t.url)?),
                (Some(_), None) => bail!(
                    "--sample records what it checked in the config's state directory: give \
                     a config (-c FILE) that names the target"
                ),
            };
            let reports = verify_runs(&store, d, &a, &trust, coverage)?;
            let mut frozen: Vec<String> = reports
                .iter()
                .flat_map(|r| r.frozen.iter().cloned())
                .collect();
            frozen.sort();
            frozen.dedup();
            if let (false, Ok(place)) = (
                frozen.is_empty(),
                coffer::policies::S3Place::from_url(&t.url),
            ) {
                eprintln!(
                    "coffer verify: {} packs are in a cold storage class (GLACIER or \
                     DEEP_ARCHIVE): the files in them were not checked. To thaw them for 7 \
                     days with the AWS CLI and the admin credential, then verify again:\n{}",
                    frozen.len(),
                    coffer::policies::thaw_script(&place, &frozen)
                );
            }
            data_reports.extend(reports);
        }
        if !a.storage {
            continue;
        }
        let mut opts = coffer::verify::VerifyOptions::new(&tmp_dir);
        opts.read_data = a.read_data;
        opts.trust = trust.clone();
        opts.state_dir = cfg.as_ref().map(|c| c.state_dir.clone());
        opts.url = t.url.clone();
        let bar = Bar::new("verify", a.json);
        let report = coffer::verify::verify_storage(&store, &opts, &bar)?;
        if !a.json {
            for f in &report.findings {
                eprintln!(
                    "coffer verify: {}: {} ({}): {}",
                    t.name,
                    f.kind,
                    if f.runs.is_empty() {
                        "no run".to_string()
                    } else {
                        f.runs.join(", ")
                    },
                    output::escape_line(&f.message)
                );
            }
            output::summary(&output::verify_summary(&report));
        }
        all.push(report);
    }
    if a.json {
        if a.data || a.against.is_some() {
            let out = serde_json::json!({"storage": all, "data": data_reports,
                "against": against_reports});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
    }
    Ok(
        if all.iter().all(|r| r.clean())
            && data_reports.iter().all(|r| r.clean())
            && against_reports.iter().all(|r| r.clean())
        {
            EXIT_OK
        } else {
            EXIT_FOUND
        },
    )
}

/// `verify --data` on one target: the run asked for, or the newest run of each (host,
/// source) that the filters leave.
fn verify_runs(
    store: &coffer::Reader,
    decryptor: &coffer::Decryptor,
    a: &VerifyArgs,
    trust: &coffer::runs::Trust,
    mut coverage: Option<coffer::verify::Coverage>,
) -> Result<Vec<coffer::verify::DataReport>> {
    let chosen: Vec<MetafileSource> = if a.run.is_some() {
        vec![MetafileSource::Run {
            host: a.host.clone(),
            source: a.source.clone(),
            id: a.run.clone(),
            at: None,
        }]
    } else {
        let mut groups = std::collections::BTreeSet::new();
        for r in store.list_runs()? {
            // With --at, only the (host, source) pairs that have a run by then.
            let by_then = a.at.is_none_or(|at| {
                chrono::DateTime::parse_from_rfc3339(&r.time).is_ok_and(|t| t <= at)
            });
            if a.source.as_ref().is_none_or(|s| *s == r.source)
                && a.host.as_ref().is_none_or(|h| *h == r.host)
                && by_then
            {
                groups.insert((r.host, r.source));
            }
        }
        groups
            .into_iter()
            .map(|(host, source)| MetafileSource::Run {
                host: Some(host),
                source: Some(source),
                id: None,
                at: a.at,
            })
            .collect()
    };
    if let (Some(at), true) = (a.at, chosen.is_empty()) {
        return Err(coffer::Error::NotFound(format!(
            "no run{} on target {} started at or before {}; `coffer runs` lists them",
            a.source
                .as_ref()
                .map(|s| format!(" of source {s:?}"))
                .unwrap_or_default(),
            store.name(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .into());
    }
    let mut reports = Vec::new();
    for source in &chosen {
        let bar = Bar::new("verify", a.json);
        let sample = a
            .sample
            .zip(coverage.as_mut())
            .map(|(share, coverage)| coffer::verify::Sample { share, coverage });
        let mut opts = coffer::verify::DataOptions::default();
        opts.sample = sample;
        opts.max_bytes = a.max_bytes;
        opts.max_requests = a.max_requests;
        opts.trust = trust.clone();
        let report = coffer::verify::verify_data(store, source, decryptor, opts, &bar)?;
        if !a.json {
            for r in &report.recovered {
                eprintln!(
                    "coffer verify: {}: {}",
                    report.run,
                    output::escape_line(&r.message)
                );
            }
            for p in &report.problems {
                eprintln!(
                    "coffer verify: {}: {}: {}",
                    report.run,
                    p.path
                        .as_deref()
                        .map_or_else(String::new, output::escape_line),
                    output::escape_line(&p.message)
                );
            }
            println!(
                "{}: verify --data: {}: {} files ({}) and {} chunks in {} of {} packs \
                 checked, {} would not restore whole{}",
                store.name(),
                report.run,
                report.files,
                output::bytes(report.bytes),
                report.chunks,
                report.packs_checked,
                report.packs,
                report.failed,
                report.packs_covered.map_or_else(String::new, |c| format!(
                    "; this round of samples has checked {c} of the {} packs",
                    report.packs
                ))
            );
            if let Some(why) = &report.stopped {
                println!(
                    "  stopped: {why} ({} fetched in {} requests); {} files were not checked",
                    output::bytes(report.bytes_fetched),
                    report.requests,
                    report.files_unchecked
                );
            }
        }
        reports.push(report);
    }
    Ok(reports)
}
