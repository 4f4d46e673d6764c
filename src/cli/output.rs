//! Rendering results for people (text) and machines (JSON), and the progress bar.

use std::io::IsTerminal;
use std::sync::Mutex;

use std::fmt::Write;

use coffer::{BackupStats, BenchReport, Progress, RestoreStats};
use indicatif::{ProgressBar, ProgressStyle};

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn backup_summary(s: &BackupStats) -> String {
    let mut notes = String::new();
    if s.dirs_skipped > 0 {
        notes += &format!(
            "  skipped dirs   {} (their contents were not read)\n",
            s.dirs_skipped
        );
    }
    if s.files_changed_while_read > 0 {
        notes += &format!(
            "  changed        {} files while they were read (stored as read)\n",
            s.files_changed_while_read
        );
    }
    if s.packs_missing > 0 {
        notes += &format!(
            "  missing packs  {} on the target (what this run needs was stored again)\n",
            s.packs_missing
        );
    }
    if s.bytes_holes > 0 {
        notes += &format!("  holes          {} (not read)\n", bytes(s.bytes_holes));
    }
    format!(
        "{} -> {}: run {} by {}\n\
         \x20 files          {} (new {}, changed {}, unchanged {}, skipped {})\n\
         \x20 other entries  {}\n\
         {notes}\
         \x20 size           {} ({} read)\n\
         \x20 chunks         {} ({} new, {})\n\
         \x20 stored         {} in {} packs and {} objects of the run's own\n\
         \x20 dedup ratio    {}\n\
         \x20 requests       {} puts, {} gets, {} list pages\n\
         \x20 elapsed        {:.2}s ({}/s read)\n",
        s.source,
        s.target,
        s.run,
        s.host,
        s.files,
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.files_skipped,
        s.other_entries,
        bytes(s.bytes_total),
        bytes(s.bytes_read),
        s.chunks,
        s.chunks_new,
        bytes(s.bytes_new),
        bytes(s.bytes_stored),
        s.packs_stored,
        s.run_objects_stored,
        match s.dedup_ratio {
            Some(r) => format!("{r:.2}"),
            None => "- (nothing new)".into(),
        },
        s.requests.puts,
        s.requests.gets,
        s.requests.list_pages,
        s.elapsed_secs,
        bytes(s.read_bytes_per_sec as u64),
    )
}

pub fn restore_summary(s: &RestoreStats) -> String {
    let mut left_out = String::new();
    if s.skipped > 0 {
        left_out += &format!(", {} device nodes not created (--devices)", s.skipped);
    }
    if s.setid_stripped > 0 {
        left_out += &format!(
            ", {} without setuid/setgid bits (--setid)",
            s.setid_stripped
        );
    }
    if s.identical > 0 {
        left_out += &format!(", {} already there and identical", s.identical);
    }
    if !s.recovered.is_empty() {
        left_out += &format!(
            "; {} overwritten packs read from an earlier version (the target needs repair: \
             see the warnings above)",
            s.recovered.len()
        );
    }
    format!(
        "restored run {}: {} files ({}), {} other entries, {} failed{left_out}, {:.2}s\n",
        s.run,
        s.files,
        bytes(s.bytes),
        s.other_entries,
        s.failed,
        s.elapsed_secs
    )
}

pub fn prune_report(r: &coffer::prune::PruneReport) -> String {
    let mut o = String::new();
    for g in &r.groups {
        let _ = writeln!(
            o,
            "{}: host {}, source {} ({})",
            r.target,
            g.host,
            g.source,
            g.policy.as_deref().unwrap_or("no rules: every run kept")
        );
        for i in &g.runs {
            let _ = writeln!(
                o,
                "  {:<7} {}  {}{}",
                if i.keep { "keep" } else { "delete" },
                i.run,
                i.reasons.join(", "),
                i.kept_until
                    .as_deref()
                    .map(|u| format!(" (until {u})"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        o,
        "{}: {} runs kept, {} {}",
        r.target,
        r.kept,
        r.deleted,
        if r.dry_run {
            "would be deleted (dry run: nothing deleted); `coffer gc` then frees their data"
        } else {
            "deleted; `coffer gc` frees the data they alone used"
        }
    );
    o
}

/// What prune did to the Object Lock of the runs it kept.
pub fn lock_summary(target: &str, s: &coffer::lock::LockStats) -> String {
    let verb = if s.dry_run {
        "would be extended"
    } else {
        "extended"
    };
    let mut o = format!(
        "{target}: Object Lock ({}) of the {} kept runs: {} objects checked, {} {verb}",
        s.mode, s.runs, s.objects, s.extended
    );
    if let Some(latest) = &s.latest {
        o += &format!(" (to {latest} at the latest)");
    }
    o += &format!(", {} locked long enough", s.enough);
    if s.missing > 0 {
        o += &format!(", {} missing", s.missing);
    }
    o.push('\n');
    o
}

/// `coffer status` for people and monitoring plugins: the first line is the verdict.
pub fn status_report(
    health: coffer::status::Health,
    sources: &[coffer::status::SourceStatus],
    unreadable: &[(String, String)],
) -> String {
    use coffer::status::Health;
    // Each error names its target already.
    let mut problems: Vec<String> = unreadable.iter().map(|(_, e)| e.clone()).collect();
    for s in sources.iter().filter(|s| s.health != Health::Ok) {
        problems.push(format!("{}/{}: {}", s.host, s.source, s.reasons.join("; ")));
    }
    let summary = if problems.is_empty() {
        let oldest = sources.iter().filter_map(|s| s.age_secs).max().unwrap_or(0);
        format!(
            "{} source{} backed up, each with a complete run at most {} old",
            sources.len(),
            if sources.len() == 1 { "" } else { "s" },
            coffer::retention::humantime(std::time::Duration::from_secs(oldest))
        )
    } else {
        problems.join(" | ")
    };
    let mut out = format!("COFFER {} - {}\n", health.word(), escape_line(&summary));
    for s in sources {
        out += &format!(
            "  {:<8} {} {}/{}: {}, {} of {} runs ok\n",
            s.health.word(),
            s.target,
            escape_line(&s.host),
            escape_line(&s.source),
            match (&s.last_complete, s.age_secs) {
                (Some(t), Some(a)) => format!(
                    "last complete run stored {t} ({} ago)",
                    coffer::retention::humantime(std::time::Duration::from_secs(a))
                ),
                _ => "no complete run".to_string(),
            },
            s.runs_ok,
            s.runs
        );
    }
    out
}

pub fn verify_summary(r: &coffer::verify::VerifyReport) -> String {
    format!(
        "{}: verify --storage{}: {}\n\
         \x20 runs           {} ({} ok)\n\
         \x20 objects        {} ({}), {} referenced by runs\n\
         \x20 read           {}\n\
         \x20 findings       {} (named on standard error)\n\
         \x20 elapsed        {:.2}s\n",
        r.target,
        if r.read_data { " --read-data" } else { "" },
        if r.clean() { "clean" } else { "PROBLEMS FOUND" },
        r.runs,
        r.runs_ok,
        r.objects,
        bytes(r.bytes),
        r.objects_referenced,
        if r.read_data {
            bytes(r.bytes_read)
        } else {
            "nothing (listing only; --read-data reads and hashes every object)".to_string()
        },
        r.findings.len() as u64 + r.findings_more,
        r.elapsed_secs
    )
}

/// `coffer backup --dry-run`, for people.
pub fn dry_run_summary(d: &coffer::DryRun) -> String {
    format!(
        "{} -> {} (dry run: nothing stored){}\n\
         \x20 files          {} ({} unchanged, {} to read, {} skipped)\n\
         \x20 size           {} ({} to read)\n\
         \x20 new chunks     {} of {} read, {} before compression\n",
        d.source,
        d.target,
        if d.known_target {
            ""
        } else {
            ": the local index knows nothing of this target yet, all is new"
        },
        d.files,
        d.files_unchanged,
        d.files_to_read,
        d.skipped,
        bytes(d.bytes_total),
        bytes(d.bytes_to_read),
        d.chunks_new,
        d.chunks,
        bytes(d.bytes_new),
    )
}

pub fn gc_summary(s: &coffer::gc::GcStats) -> String {
    let grace = coffer::retention::humantime(std::time::Duration::from_secs(s.grace_secs));
    format!(
        "{}: gc{} over {} runs, grace period {grace}\n\
         \x20 referenced     {} objects ({}), kept\n\
         \x20 too young      {} objects ({}), kept for the grace period\n\
         {}\
         \x20 unreferenced   {} objects ({}), {}\n\
         \x20 unfinished     {} object lists of runs that never committed, {}\n\
         \x20 missing        {} referenced objects not on the target\n\
         \x20 problems       {} (named on standard error)\n\
         {}\
         \x20 elapsed        {:.2}s\n",
        s.target,
        if s.dry_run { " (dry run)" } else { "" },
        s.runs,
        s.objects_referenced,
        bytes(s.bytes_referenced),
        s.objects_young,
        bytes(s.bytes_young),
        if s.objects_cold_kept > 0 {
            format!(
                "  cold, young    {} objects ({}), unreferenced but kept for their storage \
                 class's minimum duration (--early-delete deletes them)\n",
                s.objects_cold_kept,
                bytes(s.bytes_cold_kept)
            )
        } else {
            String::new()
        },
        s.objects_deleted,
        bytes(s.bytes_deleted),
        if s.dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        s.lists_deleted,
        if s.dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        s.missing.len(),
        s.problems.len(),
        if s.objects_foreign > 0 {
            format!(
                "  not coffer's   {} objects under data/, left alone\n",
                s.objects_foreign
            )
        } else {
            String::new()
        },
        s.elapsed_secs
    )
}

/// A chunk size bound, short: 256KiB, 1MiB.
fn bound(n: u32) -> String {
    match n {
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

pub fn bench_report(r: &BenchReport) -> String {
    let mut o = String::new();
    let rate = |t: &coffer::bench::Throughput| format!("{:>8.1} MB/s", t.mb_per_sec);
    let _ = writeln!(o, "input        {}", r.input.description);
    let _ = writeln!(
        o,
        "cores        {} (the all-cores figures use {} threads)",
        r.cores, r.threads
    );
    let _ = writeln!(
        o,
        "figures      median of {} runs; MB/s = 10^6 bytes of input per second",
        r.repetitions
    );

    let _ = writeln!(o, "\nchunking: FastCDC, each file on its own, one core");
    let _ = writeln!(
        o,
        "  {:<9} {:<18} {:>13} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "variant",
        "min/avg/max",
        "speed",
        "chunks",
        "smallest",
        "median",
        "p90",
        "largest",
        "average",
        "at max"
    );
    for c in &r.chunking {
        let s = &c.sizes;
        let _ = writeln!(
            o,
            "  {:<9} {:<18} {} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
            format!("{}{}", c.variant, if c.backup_default { " *" } else { "" }),
            format!("{}/{}/{}", bound(c.min), bound(c.avg), bound(c.max)),
            rate(&c.throughput),
            c.chunks,
            bytes(s.smallest),
            bytes(s.median),
            bytes(s.p90),
            bytes(s.largest),
            bytes(s.average.round() as u64),
            s.at_max,
        );
    }
    let _ = writeln!(
        o,
        "  * what backup uses: its chunks are the \"default chunks\" below"
    );

    let _ = writeln!(o, "\nhashing: BLAKE3 of the default chunks, one core");
    let _ = writeln!(o, "  {}", rate(&r.hashing));

    let c = &r.compression;
    let _ = writeln!(
        o,
        "\ncompression: zstd where it saves a tenth, as backup does; default chunks, one core"
    );
    let _ = writeln!(
        o,
        "  {}   ratio {:.2}: {} chunks of {} compressed, {} -> {}",
        rate(&c.throughput),
        c.ratio,
        c.chunks_compressed,
        c.chunks,
        bytes(r.input.bytes),
        bytes(c.bytes_out)
    );

    let e = &r.encryption;
    let _ = writeln!(
        o,
        "\nencryption: OpenPGP to a throwaway {} key, one pack session; default chunks",
        e.key
    );
    let _ = writeln!(o, "  {}   one core", rate(&e.one_core));
    let _ = writeln!(
        o,
        "  {}   all cores  <- the baseline whole backups are compared with",
        rate(&e.all_cores)
    );
    let _ = writeln!(
        o,
        "  {}   compression + encryption on all cores, a session per pack, as backup does",
        rate(&e.seal_all_cores)
    );

    let _ = writeln!(
        o,
        "\npipeline: whole backups (walk to metafile), a fresh index and target each time"
    );
    for (p, what) in [
        (&r.pipeline, "the input into memory"),
        (
            &r.incompressible_to_folder,
            "as much pseudo-random data to a folder target",
        ),
    ] {
        let _ = writeln!(
            o,
            "  {}   {:.2} of encryption on all cores: {what}",
            rate(&p.throughput),
            p.of_encryption_all_cores
        );
        if let Some(c) = &p.ceiling {
            let _ = writeln!(
                o,
                "               {:.2} of the ceiling the stages allow, {:.1} MB/s on {} cores \
                 (s/MB: chunk {:.4}, hash {:.4} x{:.2}, compress {:.4}, encrypt {:.4}, \
                 pack hash {:.4})",
                p.of_ceiling,
                c.mb_per_sec,
                c.cores,
                c.chunking,
                c.hashing,
                c.hashes_per_byte,
                c.compression,
                c.encryption,
                c.pack_hashing
            );
        }
        let _ = writeln!(
            o,
            "               files {}, read {}, chunks {} ({} new), stored {} in {} objects",
            p.files,
            bytes(p.bytes_read),
            p.chunks,
            p.chunks_new,
            bytes(p.bytes_stored),
            p.objects_stored
        );
        for problem in &p.problems {
            let _ = writeln!(o, "  note: {problem}");
        }
    }
    o
}

/// How much coffer says (`-q`, `-v`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

static VERBOSITY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

/// Sets how much coffer says, once, from the command line.
pub fn set_verbosity(v: Verbosity) {
    VERBOSITY.store(v as u8, std::sync::atomic::Ordering::Relaxed);
}

fn verbosity() -> Verbosity {
    match VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        2 => Verbosity::Verbose,
        _ => Verbosity::Normal,
    }
}

/// Prints a command's summary on standard output, unless `--quiet`.
pub fn summary(text: &str) {
    if verbosity() != Verbosity::Quiet {
        print!("{text}");
    }
}

/// A progress display on a terminal (standard error): the phase, how many files (or
/// objects) and bytes so far and at what rate, and, when the phase knows its total (a
/// restore, a verify, a backup after its first run: the last run's size), a bar with the
/// total and the time left. Off a terminal it draws nothing; warnings go to standard error
/// either way, one line each.
pub struct Bar {
    bar: Option<ProgressBar>,
    command: &'static str,
    lock: Mutex<()>,
    items: std::sync::atomic::AtomicU64,
    /// Whether the phase has counted bytes yet (checked on every count, so a flag rather
    /// than the bar's own state, which takes a lock).
    counting: std::sync::atomic::AtomicBool,
}

impl Bar {
    pub fn new(command: &'static str, quiet: bool) -> Self {
        let quiet = quiet || verbosity() == Verbosity::Quiet;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(Self::spinner());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Bar {
            bar,
            command,
            lock: Mutex::new(()),
            items: Default::default(),
            counting: Default::default(),
        }
    }

    fn spinner() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {prefix}  {wide_msg}").expect("valid template")
    }

    fn spinner_bytes() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {prefix}  {bytes}  {bytes_per_sec}  {wide_msg}")
            .expect("valid template")
    }

    fn with_total() -> ProgressStyle {
        ProgressStyle::with_template(
            "{prefix} [{bar:24}] {bytes}/{total_bytes}  {bytes_per_sec}  ETA {eta}  {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> ")
    }

    /// What this command counts.
    fn noun(&self) -> &'static str {
        if self.command == "gc" {
            "objects"
        } else {
            "files"
        }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        self.items.store(0, std::sync::atomic::Ordering::Relaxed);
        self.counting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.reset();
            b.set_prefix(escape_line(name));
            b.set_message(String::new());
            match total {
                Some(t) => {
                    b.set_length(t);
                    b.set_style(Self::with_total());
                }
                None => {
                    b.unset_length();
                    b.set_style(Self::spinner());
                }
            }
            // A phase after one that finished: its ticker stopped with it.
            b.enable_steady_tick(std::time::Duration::from_millis(200));
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            // A phase without a total shows bytes from the first on.
            let first = !self
                .counting
                .swap(true, std::sync::atomic::Ordering::Relaxed);
            if first && b.length().is_none() {
                b.set_style(Self::spinner_bytes());
            }
            b.inc(n);
        }
    }
    fn item(&self, name: &str) {
        let n = self
            .items
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Some(b) = &self.bar {
            b.set_message(format!("{n} {}  {}", self.noun(), escape_line(name)));
        }
    }
    fn warn(&self, message: &str) {
        let _g = self.lock.lock();
        let line = format!("coffer {}: {message}", self.command);
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
    fn detail(&self, line: &str) {
        if self.wants_detail() {
            self.warn(line);
        }
    }
    fn wants_detail(&self) -> bool {
        verbosity() == Verbosity::Verbose
    }
}

/// The table `coffer runs` prints, built a run at a time: each row is kept as one line
/// of cells (escaped, so a cell holds no tab), the widths as they grow.
pub struct RunsTable {
    rows: Vec<String>,
    widths: [usize; 11],
}

const RUNS_HEAD: [&str; 11] = [
    "TARGET", "HOST", "SOURCE", "RUN", "STORED", "FILES", "SIZE", "ADDED", "TOOK", "SIGNED",
    "STATUS",
];

impl RunsTable {
    /// An empty table.
    pub fn new() -> Self {
        RunsTable {
            rows: Vec::new(),
            widths: RUNS_HEAD.map(str::len),
        }
    }

    /// Adds a row for `run` on target `target`.
    pub fn push(&mut self, target: &str, r: &coffer::RunInfo) {
        let stat = |f: &dyn Fn(&coffer::RunStats) -> String| {
            r.stats.as_ref().map_or_else(|| "-".to_string(), f)
        };
        let cells = [
            target.to_string(),
            r.host.clone(),
            r.source.clone(),
            r.id.clone(),
            r.stored.clone(),
            stat(&|s| s.files.to_string()),
            stat(&|s| bytes(s.bytes)),
            stat(&|s| bytes(s.bytes_new)),
            stat(&|s| format!("{}s", s.seconds)),
            r.signature.word().to_string(),
            match r.status.reason() {
                Some(why) => format!("{}: {}", r.status.word(), why),
                None => r.status.word().to_string(),
            },
        ]
        .map(|c| escape_line(&c));
        for (w, c) in self.widths.iter_mut().zip(&cells) {
            *w = (*w).max(c.chars().count());
        }
        self.rows.push(cells.join("\t"));
    }

    /// The table, a header and a line per run.
    pub fn render(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let head = RUNS_HEAD.join("\t");
        for row in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::new();
            let mut cells = row.split('\t').zip(self.widths).peekable();
            while let Some((c, w)) = cells.next() {
                if cells.peek().is_some() {
                    let _ = write!(line, "{c:<w$}  ");
                } else {
                    line.push_str(c);
                }
            }
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

impl Default for RunsTable {
    fn default() -> Self {
        Self::new()
    }
}

/// A JSON array written an item at a time, byte for byte as `serde_json::to_string_pretty`
/// writes the whole array (an item's lines indented by two spaces; strings hold no raw
/// newline).
pub struct JsonArray {
    on: bool,
    items: usize,
}

impl JsonArray {
    /// An array that is written only if `on`.
    pub fn new(on: bool) -> Self {
        JsonArray { on, items: 0 }
    }

    /// Writes one item.
    pub fn item(
        &mut self,
        out: &mut impl std::io::Write,
        v: &serde_json::Value,
    ) -> anyhow::Result<()> {
        if !self.on {
            return Ok(());
        }
        out.write_all(if self.items == 0 { b"[\n" } else { b",\n" })?;
        self.items += 1;
        let text = serde_json::to_string_pretty(v)?;
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            write!(out, "  {line}")?;
            if lines.peek().is_some() {
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Ends the array (`[]` if it has no item).
    pub fn end(&mut self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        if self.on {
            out.write_all(if self.items == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        Ok(())
    }
}

/// A text for one line of output: control characters (a newline in a name, say) and
/// backslashes escaped, so nothing can forge a second line.
pub fn escape_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// `coffer ls -l`: one entry as `tar tv` shows it, in UTC, the name escaped.
pub fn ls_long(e: &coffer::Listed) -> String {
    let kind = match e.kind {
        "dir" => 'd',
        "symlink" => 'l',
        "hardlink" => 'h',
        "fifo" => 'p',
        "chardev" => 'c',
        "blockdev" => 'b',
        _ => '-',
    };
    let mut mode = String::with_capacity(10);
    mode.push(kind);
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (e.mode >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        mode.push(match (e.mode & special != 0, x) {
            (true, true) => set,
            (true, false) => unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    let name = |raw: &Option<Vec<u8>>, id: u32| {
        raw.as_deref()
            .map_or_else(|| id.to_string(), coffer::escape_name)
    };
    let size = match e.device {
        Some((major, minor)) => format!("{major},{minor}"),
        None => e.size.to_string(),
    };
    let time = chrono::DateTime::from_timestamp(e.mtime, 0).map_or_else(
        || e.mtime.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    );
    let mut line = format!(
        "{mode} {}/{} {size:>12} {time} {}",
        name(&e.raw_names.0, e.uid),
        name(&e.raw_names.1, e.gid),
        coffer::escape_name(&e.raw_path)
    );
    if let Some(t) = &e.raw_target {
        line.push_str(if e.kind == "hardlink" {
            " link to "
        } else {
            " -> "
        });
        line.push_str(&coffer::escape_name(t));
    }
    line
}

/// `coffer diff`: `+ PATH`, `- PATH`, `M PATH (what)` or `U PATH (what)`, the name
/// escaped.
pub fn diff_line(c: &coffer::Change) -> String {
    let name = coffer::escape_name(c.raw_path());
    match c.change {
        "added" => format!("+ {name}"),
        "removed" => format!("- {name}"),
        _ => {
            let data = c
                .what
                .iter()
                .any(|w| matches!(*w, "content" | "type" | "target" | "device"));
            format!(
                "{} {name} ({})",
                if data { 'M' } else { 'U' },
                c.what.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An array written an item at a time is the array `to_string_pretty` writes whole.
    #[test]
    fn a_json_array_written_by_items_is_the_pretty_array() {
        let items = [
            serde_json::json!({"a": 1, "b": {"c": [1, 2], "d": "x\ny"}, "e": []}),
            serde_json::json!("plain"),
            serde_json::json!({"f": null}),
        ];
        for n in 0..=items.len() {
            let mut out = Vec::new();
            let mut array = JsonArray::new(true);
            for v in &items[..n] {
                array.item(&mut out, v).unwrap();
            }
            array.end(&mut out).unwrap();
            let whole = serde_json::to_string_pretty(&items[..n]).unwrap() + "\n";
            assert_eq!(String::from_utf8(out).unwrap(), whole);
        }
        let mut out = Vec::new();
        let mut off = JsonArray::new(false);
        off.item(&mut out, &items[0]).unwrap();
        off.end(&mut out).unwrap();
        assert!(out.is_empty());
    }
}
