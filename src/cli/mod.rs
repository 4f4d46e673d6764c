//! The command line: parse, call one library function, render the result.

mod args;
mod check;
mod find;
mod output;

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use coffer::{Config, MetafileSource, RestoreOptions, Store, TargetConfig};
use zeroize::Zeroizing;

use args::{
    BackupArgs, BenchArgs, CatArgs, ChosenRun, Cli, Command, CompletionsArgs, DiffArgs, DumpArgs,
    GcArgs, InitArgs, KeyArgs, KeygenArgs, LsArgs, ManArgs, PruneArgs, RestoreArgs, RunsArgs,
    StatusArgs, TrustArgs, VerifyArgs,
};
use output::Bar;

/// Everything done.
const EXIT_OK: u8 = 0;
/// An error stopped the command.
const EXIT_ERROR: u8 = 1;
/// Done, but some files were skipped or failed.
const EXIT_PARTIAL: u8 = 3;
/// `verify` found something wrong.
const EXIT_FOUND: u8 = 4;
/// Interrupted by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// A cancellation flag set by SIGINT and SIGTERM; a second signal ends the process at
/// once (exit status 130).
fn interrupt_flag() -> coffer::Cancel {
    let cancel = coffer::Cancel::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(EXIT_INTERRUPTED),
            cancel.flag(),
        );
        let _ = signal_hook::flag::register(sig, cancel.flag());
    }
    cancel
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    output::set_verbosity(if cli.quiet {
        output::Verbosity::Quiet
    } else if cli.verbose {
        output::Verbosity::Verbose
    } else {
        output::Verbosity::Normal
    });
    let name = match &cli.command {
        Command::Keygen(_) => "keygen",
        Command::Init(_) => "init",
        Command::Backup(_) => "backup",
        Command::Runs(_) => "runs",
        Command::Restore(_) => "restore",
        Command::Cat(_) => "cat",
        Command::Ls(_) => "ls",
        Command::Dump(_) => "dump",
        Command::Diff(_) => "diff",
        Command::Find(_) => "find",
        Command::Bench(_) => "bench",
        Command::Prune(_) => "prune",
        Command::Gc(_) => "gc",
        Command::Verify(_) => "verify",
        Command::Status(_) => "status",
        Command::Completions(_) => "completions",
        Command::Man(_) => "man",
    };
    let json = match &cli.command {
        Command::Backup(a) => a.json,
        Command::Runs(a) => a.json,
        Command::Restore(a) => a.json,
        Command::Cat(_) => false,
        Command::Ls(a) => a.json,
        Command::Dump(_) => false,
        Command::Diff(a) => a.json,
        Command::Find(a) => a.json,
        Command::Bench(a) => a.json,
        Command::Prune(a) => a.json,
        Command::Gc(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Status(a) => a.json,
        Command::Keygen(_) | Command::Init(_) | Command::Completions(_) | Command::Man(_) => false,
    };
    let result = match cli.command {
        Command::Keygen(a) => keygen(a),
        Command::Init(a) => init(cli.config.as_deref(), a),
        Command::Backup(a) => backup(cli.config.as_deref(), a),
        Command::Runs(a) => runs(cli.config.as_deref(), a),
        Command::Restore(a) => restore(cli.config.as_deref(), a),
        Command::Cat(a) => cat(cli.config.as_deref(), a),
        Command::Ls(a) => ls(cli.config.as_deref(), a),
        Command::Dump(a) => dump(cli.config.as_deref(), a),
        Command::Diff(a) => diff(cli.config.as_deref(), a),
        Command::Find(a) => find::find(cli.config.as_deref(), a),
        Command::Bench(a) => bench(a),
        Command::Completions(a) => completions(a),
        Command::Man(a) => man(a),
        Command::Prune(a) => prune(cli.config.as_deref(), a),
        Command::Gc(a) => gc(cli.config.as_deref(), a),
        Command::Verify(a) => check::verify(cli.config.as_deref(), a),
        Command::Status(a) => check::status(cli.config.as_deref(), a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(EXIT_OK);
            }
            let message = error_text(&e);
            eprintln!("coffer {name}: {message}");
            let kind = e
                .chain()
                .find_map(|c| c.downcast_ref::<coffer::Error>())
                .map_or("other", coffer::Error::kind);
            let code = if kind == "interrupted" {
                EXIT_INTERRUPTED
            } else {
                EXIT_ERROR
            };
            if json {
                // Whoever reads the JSON learns that the command failed, and why.
                let out = serde_json::json!({
                    "error": {"kind": kind, "message": message, "exit_status": code}
                });
                println!("{out}");
            }
            ExitCode::from(code)
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text the line already
/// holds (a coffer error shows its I/O cause itself).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The config given, or the default one if it exists (commands that also work with a
/// target URL alone).
fn optional_config(explicit: Option<&Path>) -> Result<Option<Config>> {
    if explicit.is_some() {
        return load_config(explicit).map(Some);
    }
    match coffer::config_path(None) {
        Ok(p) if p.exists() => Ok(Some(Config::load(&p)?)),
        _ => Ok(None),
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config> {
    let path = coffer::config_path(explicit)?;
    Ok(Config::load(&path)?)
}

/// Reads a passphrase: from `file`, else `COFFER_PASSPHRASE`, else a prompt on the terminal.
fn passphrase(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("passphrase file {}", f.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("passphrase file {} is empty", f.display());
        }
        return Ok(Zeroizing::new(line.to_string()));
    }
    if let Ok(p) = std::env::var("COFFER_PASSPHRASE") {
        if !p.is_empty() {
            return Ok(Zeroizing::new(p));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "a passphrase is needed and there is no terminal to ask on: use \
             --passphrase-file FILE or COFFER_PASSPHRASE"
        );
    }
    let first = Zeroizing::new(rpassword::prompt_password(prompt)?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat the passphrase: ")?);
        if *first != *again {
            bail!("the passphrases differ");
        }
    }
    if first.is_empty() {
        bail!("empty passphrase; use --no-passphrase if you really want no protection");
    }
    Ok(first)
}

fn keygen(a: KeygenArgs) -> Result<u8> {
    let algorithm = match a.rsa.as_deref() {
        Some("3072") => coffer::KeyAlgorithm::Rsa3072,
        Some("4096") => coffer::KeyAlgorithm::Rsa4096,
        _ => coffer::KeyAlgorithm::Cv25519,
    };
    if a.name.is_empty() || a.name.contains('/') {
        bail!("--name must be a plain file name");
    }
    let infix = if a.sign_only { ".sign" } else { "" };
    let public = a.out.join(format!("{}{infix}.pub.asc", a.name));
    let secret = a.out.join(format!("{}{infix}.key.asc", a.name));
    for p in [&public, &secret] {
        if p.exists() {
            bail!(
                "{} already exists; choose another --name or --out",
                p.display()
            );
        }
    }
    let pass = if a.no_passphrase || a.sign_only {
        None
    } else {
        Some(passphrase(
            a.passphrase_file.as_deref(),
            "Passphrase for the new secret key: ",
            true,
        )?)
    };
    let lifetime = key_lifetime(&a.expires)?;
    let key = if a.sign_only {
        coffer::generate_signing_key(&a.name, algorithm, lifetime)?
    } else {
        coffer::generate_key_with(
            &a.name,
            algorithm,
            pass.as_deref().map(|s| s.as_str()),
            lifetime,
        )?
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_new(&public, &key.public_armored, 0o644)?;
    write_new(&secret, &key.secret_armored, 0o600)?;
    println!("fingerprint {}", key.fingerprint);
    match key.expires {
        Some(t) => println!(
            "expires     {}  (extend it before then: gpg --quick-set-expire {fpr} 2y, and \
             gpg --quick-set-expire {fpr} 2y '*' for the subkeys)",
            chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%d"),
            fpr = key.fingerprint
        ),
        None => println!("expires     never"),
    }
    if a.sign_only {
        println!(
            "signing key {}  (on the host only: signing_key = \"{}\"; keep it mode 0600)",
            secret.display(),
            secret.display()
        );
        println!(
            "certificate {}  (for restore, verify, prune and status: signers = [\"{}\"])",
            public.display(),
            public.display()
        );
        return Ok(EXIT_OK);
    }
    println!(
        "public key  {}  (copy to the hosts that back up)",
        public.display()
    );
    println!(
        "secret key  {}  (keep it off those hosts; needed to restore)",
        secret.display()
    );
    Ok(EXIT_OK)
}

/// `--expires`: a duration, a date (YYYY-MM-DD, UTC midnight) or `never`.
fn key_lifetime(s: &str) -> Result<Option<std::time::Duration>> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let at = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        return match at
            .map(|t| t - chrono::Utc::now())
            .and_then(|d| d.to_std().ok())
        {
            Some(d) if !d.is_zero() => Ok(Some(d)),
            _ => bail!("--expires {s}: that date is not in the future"),
        };
    }
    match coffer::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => bail!("--expires {s}: a key must last longer than that (or use never)"),
        Err(e) => bail!("--expires: {e}; or a date such as 2030-12-31, or never"),
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn init(config: Option<&Path>, a: InitArgs) -> Result<u8> {
    let (_, targets) = read_targets(config, Some(&a.target))?;
    if let Some(dir) = &a.policies {
        for t in &targets {
            let place = coffer::policies::S3Place::from_url(&t.url)?.with_lock(t.object_lock);
            coffer::setup::prepare_dir(dir)?;
            for (name, text) in coffer::policies::files(&place, &t.url) {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            if a.apply {
                let store = Store::open(t, false)?;
                coffer::setup::apply(&store, &place, dir, a.iam_endpoint.as_deref(), &mut |l| {
                    println!("{l}")
                })?;
                println!(
                    "Applied. Copy each ROLE.credentials to its machine, readable by root \
                     alone, where ROLE.toml's credentials_file says."
                );
            } else {
                println!(
                    "Review them, then run apply.sh there (or `coffer init {} --policies {} \
                     --apply`) with an AWS administrator's credentials (README, 'Put-only \
                     backups on S3').",
                    a.target,
                    dir.display()
                );
            }
        }
        return Ok(EXIT_OK);
    }
    for t in &targets {
        let store = Store::open(t, true)?;
        // Listing proves the target is reachable with this credential (a put-only one
        // cannot list: then there is nothing more to check from here).
        match store.reader().list_runs() {
            Ok(runs) => println!("target {} is ready ({} runs on it)", t.url, runs.len()),
            Err(e) => println!("target {} set up; listing it failed: {e}", t.url),
        }
        // What this kind of target guarantees, and what is the user's to set up.
        for line in coffer::policies::guarantees(&t.url) {
            println!("  {line}");
        }
    }
    Ok(EXIT_OK)
}

/// With --stdin: the one source named, which must read standard input, under the name
/// --stdin-name gives. Without: `None`, and a stdin source named is refused.
fn stdin_source(
    chosen: &[&coffer::SourceConfig],
    a: &BackupArgs,
) -> Result<Option<coffer::SourceConfig>> {
    let usage = |m: String| Err(coffer::Error::Usage(m).into());
    if !a.stdin {
        if let (Some(s), false) = (
            chosen
                .iter()
                .find(|s| matches!(s.input, coffer::Input::Stdin { .. })),
            a.sources.is_empty(),
        ) {
            return usage(format!(
                "source {} stores standard input: pipe the data in and add --stdin, e.g. \
                 `mysqldump shop | coffer backup {} --stdin`",
                s.name, s.name
            ));
        }
        return Ok(None);
    }
    let [source] = chosen else {
        return usage("--stdin needs exactly one SOURCE: standard input can be read once".into());
    };
    if a.sources.is_empty() {
        return usage(format!(
            "--stdin needs the SOURCE named: coffer backup {} --stdin",
            source.name
        ));
    }
    let name = match &source.input {
        coffer::Input::Stdin { name } => a.stdin_name.clone().unwrap_or_else(|| name.clone()),
        _ => {
            return usage(format!(
                "source {} is not a stdin source; --stdin takes a [source.NAME] with stdin = \
                 true and no path or command, so that a run of one stream never stands in \
                 for a run of a tree",
                source.name
            ))
        }
    };
    if !coffer::valid_stream_name(&name) {
        return usage(format!(
            "--stdin-name {name:?} must be one file name: not empty, no '/', not '.' or \
             '..', at most 255 bytes"
        ));
    }
    let mut source = (*source).clone();
    source.input = coffer::Input::Stdin { name };
    Ok(Some(source))
}

fn backup(config: Option<&Path>, a: BackupArgs) -> Result<u8> {
    let config = load_config(config)?;
    let chosen = config.select_sources(&a.sources)?;
    let stdin_source = stdin_source(&chosen, &a)?;
    let sources: Vec<&coffer::SourceConfig> = match &stdin_source {
        Some(s) => vec![s],
        None => chosen
            .into_iter()
            .filter(|s| {
                let stdin = matches!(s.input, coffer::Input::Stdin { .. });
                if stdin {
                    eprintln!(
                        "coffer backup: note: source {} reads standard input and is left \
                         out; back it up with `... | coffer backup {} --stdin`",
                        s.name, s.name
                    );
                }
                !stdin
            })
            .collect(),
    };
    if sources.is_empty() {
        return Err(coffer::Error::Usage(
            "no source to back up: the config's only sources read standard input (use \
             --stdin)"
                .into(),
        )
        .into());
    }
    // --exclude and --exclude-file add to the ignore rules of the tree sources.
    let mut excluded = a.exclude.clone();
    for file in &a.exclude_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the exclude file {}", file.display()))?;
        excluded.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    for p in &excluded {
        coffer::check_ignore_pattern(p)?;
    }
    let sources: Vec<coffer::SourceConfig> = sources
        .into_iter()
        .map(|s| {
            let mut s = s.clone();
            if matches!(s.input, coffer::Input::Tree(_)) {
                s.ignore.extend(excluded.iter().cloned());
            }
            s
        })
        .collect();
    let sources: Vec<&coffer::SourceConfig> = sources.iter().collect();
    if a.dry_run {
        return backup_dry_run(&config, &sources, a.json);
    }
    let bar = Bar::new("backup", a.json);
    let mut opts = coffer::BackupOptions::default();
    opts.forget_cache = a.forget_cache;
    opts.allow_empty_stream = a.allow_empty;
    opts.cancel = interrupt_flag();
    let results = coffer::backup_all(&config, &sources, &opts, &bar);
    let mut code = EXIT_OK;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let mut stopped = 0;
    for (source, target, r) in results {
        match r {
            Ok(stats) => {
                if !stats.complete() && code == EXIT_OK {
                    code = EXIT_PARTIAL;
                }
                if !a.json {
                    output::summary(&output::backup_summary(&stats));
                }
                ok.push(stats);
            }
            Err(e) => {
                // An interruption outranks a failure: the status says why the command
                // stopped, and the next run starts where this one was stopped.
                if matches!(e, coffer::Error::Interrupted) {
                    code = EXIT_INTERRUPTED;
                    stopped += 1;
                    eprintln!("coffer backup: {source} -> {target}: {e}");
                } else {
                    if code != EXIT_INTERRUPTED {
                        code = EXIT_ERROR;
                    }
                    eprintln!("coffer backup: {source} -> {target}: FAILED: {e}");
                }
                failed.push(serde_json::json!({
                    "source": source, "target": target, "error": e.to_string(),
                    "kind": e.kind()
                }));
            }
        }
    }
    if a.json {
        let out = serde_json::json!({ "runs": ok, "failed": failed, "exit_status": code });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if stopped > 0 {
        eprintln!(
            "coffer backup: {stopped} of {} backups were stopped before they committed a \
             run; run the backup again to complete them",
            failed.len() + ok.len()
        );
    } else if !failed.is_empty() {
        eprintln!(
            "coffer backup: {} of {} backups failed (see above)",
            failed.len(),
            failed.len() + ok.len()
        );
    }
    Ok(code)
}

/// The targets a read command works on: a URL needs no config.
fn read_targets(
    config: Option<&Path>,
    target: Option<&str>,
) -> Result<(Option<Config>, Vec<TargetConfig>)> {
    if let Some(t) = target.filter(|t| t.contains("://")) {
        let cfg = load_config(config).ok();
        return Ok((cfg, vec![TargetConfig::from_url(t)?]));
    }
    let cfg = load_config(config)?;
    let targets = match target {
        Some(t) => vec![cfg.target(t)?],
        None => cfg.targets.values().cloned().collect(),
    };
    Ok((Some(cfg), targets))
}

/// Whose signatures count: `--signer` files, else the config's `signers` (per source).
fn trust(cfg: Option<&Config>, a: &TrustArgs) -> Result<coffer::runs::Trust> {
    let trust = if !a.signer.is_empty() {
        coffer::runs::Trust::new(coffer::Signers::load(&a.signer)?)
    } else if let Some(c) = cfg {
        let mut t = coffer::runs::Trust::new(coffer::Signers::load(&c.signers)?);
        for s in c.sources.values() {
            t = t.with_source(&s.name, coffer::Signers::load(&s.signers)?);
        }
        t
    } else {
        coffer::runs::Trust::none()
    };
    Ok(trust.allow_unsigned(a.allow_unsigned))
}

/// `coffer backup --dry-run`: what each tree source would read and store, per target.
fn backup_dry_run(
    config: &coffer::Config,
    sources: &[&coffer::SourceConfig],
    json: bool,
) -> Result<u8> {
    let mut code = EXIT_OK;
    let mut all = Vec::new();
    for s in sources {
        if !matches!(s.input, coffer::Input::Tree(_)) {
            eprintln!(
                "coffer backup: dry run: source {} stores a command's output or standard \
                 input, left out (its size is only known by running it)",
                s.name
            );
            continue;
        }
        for r in coffer::dry_run_source(config, s) {
            match r {
                Ok(d) => {
                    for p in &d.problems {
                        eprintln!("coffer backup: {}", output::escape_line(p));
                    }
                    if d.skipped > 0 {
                        code = code.max(EXIT_PARTIAL);
                    }
                    all.push(d);
                }
                Err(e) => {
                    eprintln!("coffer backup: dry run of {}: {e}", s.name);
                    code = EXIT_ERROR;
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for d in &all {
            output::summary(&output::dry_run_summary(d));
        }
    }
    Ok(code)
}

/// `coffer completions SHELL`: the script, from the same definitions as `--help`.
fn completions(a: CompletionsArgs) -> Result<u8> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "coffer", &mut out);
    out.flush()?;
    Ok(EXIT_OK)
}

/// `coffer man DIR`: `coffer.1` and a page per command (`coffer-backup.1`, ...).
fn man(a: ManArgs) -> Result<u8> {
    use clap::CommandFactory;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("coffer".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("coffer-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        let path = a.dir.join(format!("{name}.1"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(EXIT_OK)
}

fn runs(config: Option<&Path>, a: RunsArgs) -> Result<u8> {
    let (cfg, targets) = read_targets(config, a.target.as_deref())?;
    let trust = trust(cfg.as_ref(), &a.trust)?;
    // One host and source at a time, as JSON array items or table rows: memory holds one
    // group's runs (and the table's lines), however many hosts share a target.
    let mut out = std::io::stdout().lock();
    let mut table = output::RunsTable::new();
    let mut json = output::JsonArray::new(a.json);
    let mut flagged = 0usize;
    let mut breaks = Vec::new();
    for t in &targets {
        let store = Store::open(t, false)?.reader();
        let keep = |host: &str, source: &str| {
            a.source.as_ref().is_none_or(|s| s == source)
                && a.host.as_ref().is_none_or(|h| h == host)
        };
        let mut emit = |runs: Vec<coffer::RunInfo>, findings: &[coffer::chain::Finding]| {
            for r in &runs {
                flagged += usize::from(!r.status.is_ok());
                if a.json {
                    let chain: Vec<_> = findings
                        .iter()
                        .filter(|f| f.runs.contains(&r.id))
                        .map(|f| serde_json::json!({"kind": f.kind, "message": f.message}))
                        .collect();
                    json.item(
                        &mut out,
                        &serde_json::json!({"target": t.name, "host": r.host,
                        "source": r.source, "run": r.id, "time": r.time, "stored": r.stored,
                        "metafile_bytes": r.metafile_bytes, "status": r.status,
                        "signature": r.signature, "chain": chain, "stats": r.stats}),
                    )?;
                } else {
                    table.push(&t.name, r);
                }
            }
            Ok::<_, anyhow::Error>(())
        };
        // Output that fails (stdout closed) stops the listing; its error is the one told.
        let mut failed = None;
        let mut each = |runs, findings: &[coffer::chain::Finding]| {
            emit(runs, findings).map_err(|e| {
                let text = e.to_string();
                failed = Some(e);
                coffer::Error::Internal(text)
            })
        };
        let listed = if a.no_check {
            store.list_runs_by_source(|host, source, runs| {
                if keep(host, source) {
                    each(runs, &[])
                } else {
                    Ok(())
                }
            })
        } else {
            coffer::chain::histories(&store, &trust, keep, |_, _, h| {
                each(h.runs, &h.findings)?;
                breaks.extend(h.findings.into_iter().map(|f| (t.name.clone(), f)));
                Ok(())
            })
        };
        if let Some(e) = failed {
            return Err(e);
        }
        listed?;
    }
    if a.json {
        json.end(&mut out)?;
    } else {
        table.render(&mut out)?;
        for (t, f) in &breaks {
            eprintln!(
                "coffer runs: {t}: {}/{}: chain {}: {}",
                output::escape_line(&f.host),
                f.source,
                f.kind.word(),
                output::escape_line(&f.message)
            );
        }
    }
    Ok(if flagged > 0 || !breaks.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn restore(config: Option<&Path>, a: RestoreArgs) -> Result<u8> {
    let target = restore_target(config, a.target.as_deref(), a.source.as_deref())?;
    let store = Store::open(&target, false)?.reader();
    let source = match (&a.index, &a.source) {
        (Some(file), _) => MetafileSource::File(file.clone()),
        (None, source) if source.is_some() || a.run.is_some() => MetafileSource::Run {
            host: a.host.clone(),
            source: source.clone(),
            id: a.run.clone(),
            at: a.at,
        },
        (None, _) => bail!("give --source S (and perhaps --run ID), --run ID, or --index FILE"),
    };
    let decryptor = secret_key(&a.key)?;
    let mut opts = RestoreOptions::new(&a.to);
    opts.trust = trust(optional_config(config)?.as_ref(), &a.trust)?;
    opts.cancel = interrupt_flag();
    opts.overwrite = a.overwrite;
    opts.setid = a.setid;
    opts.devices = a.devices;
    if a.no_owner {
        opts.owners = Some(false);
    }
    opts.paths = a.paths.iter().map(|p| relative_path(p)).collect();
    let bar = Bar::new("restore", a.json);
    let stats = coffer::restore(&store, &source, &decryptor, &opts, &bar)?;
    if !stats.frozen.is_empty() {
        if let Ok(place) = coffer::policies::S3Place::from_url(&target.url) {
            eprintln!(
                "coffer restore: to thaw the {} packs for 7 days (Standard tier: 3-5 hours \
                 from GLACIER, 12 from DEEP_ARCHIVE; Bulk is cheaper and slower), with the \
                 AWS CLI and the admin credential:\n{}",
                stats.frozen.len(),
                coffer::policies::thaw_script(&place, &stats.frozen)
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        output::summary(&output::restore_summary(&stats));
    }
    Ok(
        if stats.failed > 0 || stats.skipped > 0 || stats.setid_stripped > 0 {
            EXIT_PARTIAL
        } else {
            EXIT_OK
        },
    )
}

/// The secret key `k` names: a key file (its passphrase, if it has one, from
/// --passphrase-file, else `$COFFER_PASSPHRASE`, else a prompt), or `gpg:FINGERPRINT` or
/// --gpg-agent for keys the user's gpg-agent holds.
pub(crate) fn secret_key(k: &KeyArgs) -> Result<coffer::Decryptor> {
    let usage = |m: &str| -> anyhow::Error { coffer::Error::Usage(m.into()).into() };
    if k.gpg_agent {
        return Ok(coffer::Decryptor::from_gpg_agent(None)?);
    }
    let Some(key) = &k.key else {
        return Err(usage(
            "give the secret key: --key FILE (NAME.key.asc), --key gpg:FINGERPRINT (a key \
             your gpg-agent holds, on a card too) or --gpg-agent (any key of your GnuPG \
             keyring)",
        ));
    };
    if let Some(fpr) = key.to_str().and_then(|s| s.strip_prefix("gpg:")) {
        if k.passphrase_file.is_some() {
            return Err(usage(
                "--passphrase-file is for a key file; gpg-agent asks for a key's passphrase \
                 or PIN itself",
            ));
        }
        return Ok(coffer::Decryptor::from_gpg_agent(Some(fpr))?);
    }
    let pass_file = k.passphrase_file.as_deref();
    Ok(coffer::load_secret_keys(key, &mut || {
        passphrase(pass_file, "Passphrase for the secret key: ", false)
            .map_err(|e| coffer::Error::Usage(e.to_string()))
    })?)
}

/// The store, run, key and trust a browsing command (`cat`, `ls`) reads with.
fn open_chosen(
    config: Option<&Path>,
    c: &ChosenRun,
) -> Result<(
    coffer::Reader,
    MetafileSource,
    coffer::Decryptor,
    coffer::runs::Trust,
)> {
    let target = restore_target(config, c.target.as_deref(), c.source.as_deref())?;
    let store = Store::open(&target, false)?.reader();
    let source = MetafileSource::Run {
        host: c.host.clone(),
        source: c.source.clone(),
        id: c.run.clone(),
        at: c.at,
    };
    let decryptor = secret_key(&c.key)?;
    let trust = trust(optional_config(config)?.as_ref(), &c.trust)?;
    Ok((store, source, decryptor, trust))
}

fn cat(config: Option<&Path>, a: CatArgs) -> Result<u8> {
    let (store, source, decryptor, trust) = open_chosen(config, &a.chosen)?;
    let path = relative_path(&a.path);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    // No progress bar: standard output is the file, and standard error is for problems.
    coffer::cat(
        &store,
        &source,
        &decryptor,
        &path,
        trust,
        &mut out,
        &coffer::NoProgress,
    )?;
    Ok(EXIT_OK)
}

fn diff(config: Option<&Path>, a: DiffArgs) -> Result<u8> {
    let run = |id: Option<String>, at| MetafileSource::Run {
        host: a.host.clone(),
        source: a.source.clone(),
        id,
        at,
    };
    let mut chosen: Vec<MetafileSource> =
        a.run.iter().map(|id| run(Some(id.clone()), None)).collect();
    chosen.extend(a.at.iter().map(|t| run(None, Some(*t))));
    if chosen.is_empty() && a.source.is_none() {
        bail!("give the runs to compare (--run ID, --at WHEN: twice, or once to compare with the newest run of --source)");
    }
    if chosen.len() > 2 {
        bail!("diff compares two runs: give --run and --at twice at most in all");
    }
    while chosen.len() < 2 {
        chosen.push(run(None, None));
    }
    let target = restore_target(config, a.target.as_deref(), a.source.as_deref())?;
    let store = Store::open(&target, false)?.reader();
    let decryptor = secret_key(&a.key)?;
    let trust = trust(optional_config(config)?.as_ref(), &a.trust)?;
    let paths: Vec<Vec<u8>> = a.paths.iter().map(|p| relative_path(p)).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let to_io = |e: std::io::Error| coffer::Error::io("standard output", e);
    let compared = coffer::diff(
        &store,
        &chosen[0],
        &chosen[1],
        &decryptor,
        &paths,
        trust,
        &coffer::NoProgress,
        &mut |c| {
            let line = if a.json {
                serde_json::to_string(c).map_err(|j| to_io(j.into()))?
            } else {
                output::diff_line(c)
            };
            writeln!(out, "{line}").map_err(to_io)
        },
    )?;
    out.flush()?;
    if !a.json {
        eprintln!(
            "coffer diff: from run {} to run {}",
            compared.old, compared.new
        );
    }
    Ok(EXIT_OK)
}

fn dump(config: Option<&Path>, a: DumpArgs) -> Result<u8> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        bail!(
            "standard output is a terminal: pipe the archive into tar (coffer dump ... | tar \
             -x) or redirect it to a file"
        );
    }
    let (store, source, decryptor, trust) = open_chosen(config, &a.chosen)?;
    let paths: Vec<Vec<u8>> = a.paths.iter().map(|p| relative_path(p)).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    coffer::dump(
        &store,
        &source,
        &decryptor,
        &paths,
        trust,
        &mut out,
        &coffer::NoProgress,
    )?;
    Ok(EXIT_OK)
}

fn ls(config: Option<&Path>, a: LsArgs) -> Result<u8> {
    let (store, source, decryptor, trust) = open_chosen(config, &a.chosen)?;
    let mut opts = coffer::LsOptions::default();
    opts.trust = trust;
    opts.recursive = a.recursive;
    opts.paths = a.paths.iter().map(|p| relative_path(p)).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let to_io = |e: std::io::Error| coffer::Error::io("standard output", e);
    coffer::ls(
        &store,
        &source,
        &decryptor,
        opts,
        &coffer::NoProgress,
        &mut |e| {
            let line = if a.json {
                serde_json::to_string(e).map_err(|j| to_io(j.into()))?
            } else if a.long {
                output::ls_long(e)
            } else {
                coffer::escape_name(&e.raw_path)
            };
            writeln!(out, "{line}").map_err(to_io)
        },
    )?;
    out.flush()?;
    Ok(EXIT_OK)
}

/// A path given on the command line, as the metafile writes paths: relative, no `./`
/// in front or `/` behind.
fn relative_path(p: &Path) -> Vec<u8> {
    let b = p.as_os_str().as_bytes();
    let b = b.strip_prefix(b"./").unwrap_or(b);
    b.strip_suffix(b"/").unwrap_or(b).to_vec()
}

fn bench(a: BenchArgs) -> Result<u8> {
    let input = match a.path {
        Some(path) => coffer::BenchInput::Path(path),
        None => coffer::BenchInput::Generated(a.size),
    };
    let bar = Bar::new("bench", a.json);
    let report = coffer::bench(&input, &bar)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", output::bench_report(&report))?;
    }
    Ok(EXIT_OK)
}

fn prune(config: Option<&Path>, a: PruneArgs) -> Result<u8> {
    let (cfg, targets) = read_targets(config, a.target.as_deref())?;
    let cli_rules = a.keep;
    let policy_for = |_host: &str, source: &str| -> Option<coffer::Retention> {
        if !a.source.is_empty() && !a.source.iter().any(|s| s == source) {
            return None;
        }
        if !cli_rules.is_empty() {
            return Some(cli_rules);
        }
        cfg.as_ref()?.sources.get(source).map(|s| s.retention)
    };
    let trust = trust(cfg.as_ref(), &a.trust)?;
    let mut reports = Vec::new();
    let mut problems = false;
    for t in &targets {
        let started = chrono::Utc::now();
        let store = Store::open(t, false)?.admin();
        // Only runs that check out (signatures and chain included) count toward the
        // rules: a few small reads per run.
        let history = coffer::chain::history(&store, &trust, |_, source| {
            a.source.is_empty() || a.source.iter().any(|s| s == source)
        })?;
        for p in &history.problems {
            eprintln!("coffer prune: {}: {}", t.name, output::escape_line(p));
        }
        let mut report = coffer::prune::plan(&t.name, &history.runs, &policy_for)?;
        coffer::prune::plan_records(&mut report, &history.runs, &history.tombstones);
        report.dry_run = a.dry_run;
        if !a.json {
            output::summary(&output::prune_report(&report));
        }
        if !a.dry_run {
            let bar = Bar::new("prune", a.json);
            coffer::prune::execute(&store, &report, &bar)?;
        }
        if let Some(lock) = &t.object_lock {
            let bar = Bar::new("prune", a.json);
            let stats = coffer::lock::extend(&store, &report, lock, started, a.dry_run, &bar)?;
            if !a.json {
                output::summary(&output::lock_summary(&t.name, &stats));
            }
            for p in &stats.problems {
                eprintln!("coffer prune: {}: {}", t.name, output::escape_line(p));
            }
            problems |= !stats.problems.is_empty();
            report.lock = Some(stats);
        }
        reports.push(report);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if problems { EXIT_PARTIAL } else { EXIT_OK })
}

fn gc(config: Option<&Path>, a: GcArgs) -> Result<u8> {
    let (cfg, targets) = read_targets(config, a.target.as_deref())?;
    let tmp_dir = match &cfg {
        Some(c) => c.state_dir.join("tmp"),
        None => std::env::temp_dir(),
    };
    let mut all = Vec::new();
    for t in &targets {
        let store = Store::open(t, false)?.admin();
        let bounds = coffer::refs::Bounds {
            dedup_max_age: t.dedup_max_age,
            max_run_time: t.max_run_time,
        };
        let mut opts = coffer::gc::GcOptions::new(bounds, &tmp_dir);
        opts.grace = a.grace;
        opts.dry_run = a.dry_run;
        opts.storage_class = t.storage_class;
        opts.early_delete = a.early_delete;
        let bar = Bar::new("gc", a.json);
        let stats = coffer::gc::gc(&store, &opts, &bar)?;
        if !a.json {
            output::summary(&output::gc_summary(&stats));
        }
        for p in &stats.problems {
            eprintln!("coffer gc: {}: {}", t.name, output::escape_line(p));
        }
        all.push(stats);
    }
    let problems = all.iter().any(|s| !s.problems.is_empty());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(if problems { EXIT_PARTIAL } else { EXIT_OK })
}

/// The target a restore-side command reads: `--target` (a name or a URL), else the
/// source's only target, else the config's only one.
fn restore_target(
    config: Option<&Path>,
    target: Option<&str>,
    source: Option<&str>,
) -> Result<TargetConfig> {
    if let Some(t) = target.filter(|t| t.contains("://")) {
        return Ok(TargetConfig::from_url(t)?);
    }
    let cfg = load_config(config)?;
    if let Some(t) = target {
        return Ok(cfg.target(t)?);
    }
    let candidates: Vec<String> = match source.and_then(|s| cfg.sources.get(s)) {
        Some(s) => s.targets.clone(),
        None => cfg.targets.keys().cloned().collect(),
    };
    match candidates.as_slice() {
        [one] => Ok(cfg.target(one)?),
        [] => Err(anyhow!(
            "no target in {}; give --target",
            cfg.file.display()
        )),
        many => Err(anyhow!(
            "several targets ({}); choose one with --target",
            many.join(", ")
        )),
    }
}
