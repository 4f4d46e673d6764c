//! Command-line arguments (clap). Mapped into library options in `mod.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit status:
  0  everything was done
  1  an error stopped the command (bad config, unreachable target, wrong key, ...)
  2  the command line was wrong
  3  done, but something was left out or found wrong: files skipped (backup), not
     restored (restore), runs suspicious or damaged (runs), object lists unusable
     (gc); each is named on standard error and in --json output
  130  interrupted (SIGINT, SIGTERM): what was half written was removed; a second
     signal ends coffer at once

Environment:
  COFFER_CONFIG      config file when -c is not given
                     (default: $XDG_CONFIG_HOME/coffer/config.toml)
  COFFER_PASSPHRASE  passphrase of the secret key (keygen, restore)

Quick start:
  coffer keygen --out /root/keys --name admin      # keep admin.key.asc off the host
  cp /root/keys/admin.pub.asc /etc/coffer/         # the host needs only the public key
  coffer backup -c /etc/coffer/config.toml         # from cron: quiet unless something fails
  coffer runs -c /etc/coffer/config.toml
  coffer restore -c /etc/coffer/config.toml --key admin.key.asc --source home --to /tmp/r
  coffer prune -c admin.toml --keep-daily 14 --keep-monthly 12 --dry-run   # no key needed
  coffer gc -c admin.toml                          # deletes what no run needs any more";

/// Encrypted, deduplicated, incremental off-site backups.
///
/// Sources are split into content-defined chunks, deduplicated, encrypted to OpenPGP
/// public keys and stored in packs on the targets. The host that backs up needs only the
/// recipients' public certificates; restoring needs a secret key.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file [default: $COFFER_CONFIG, else $XDG_CONFIG_HOME/coffer/config.toml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Say only what went wrong: no progress display and no summary (the exit status
    /// and standard error tell; --json output and status's verdict line are printed)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more, on standard error: each file a backup stores (new or changed), each
    /// file a restore writes, each object gc deletes
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make an OpenPGP key pair: NAME.pub.asc for the hosts, NAME.key.asc for restoring.
    ///
    /// The key is an OpenPGP v4 key that GnuPG 2.2 imports (`gpg --import`). Keep the
    /// secret key (NAME.key.asc) away from the hosts that back up.
    ///
    /// With --sign-only it makes a host's signing key instead: NAME.sign.key.asc (on the
    /// host, mode 0600, unprotected since backups sign unattended; it can sign runs and
    /// cannot decrypt anything) and NAME.sign.pub.asc (for whoever restores, verifies,
    /// prunes or monitors: their `signers`).
    ///
    ///   coffer keygen --out /root/keys --name admin
    ///   coffer keygen --sign-only --out /etc/coffer --name web1
    ///     # config on web1:       signing_key = "/etc/coffer/web1.sign.key.asc"
    ///     # config elsewhere:     signers = ["/etc/coffer/web1.sign.pub.asc"]
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
    /// Set up a target on purpose: create a file:// target's folder.
    ///
    /// A backup never creates a missing target folder by itself (an unmounted disk would
    /// otherwise be filled on the root file system): run this once, or set create = true
    /// in the target's config section. TARGET is a target name from the config or a URL.
    ///
    /// For an S3 target, --policies DIR writes what a put-only setup needs, ready for the
    /// AWS CLI: the host's, the admin's and the monitor's IAM policies, the bucket policy
    /// that refuses overwrites, the lifecycle rule, apply.sh and config skeletons.
    ///
    ///   coffer init file:///mnt/usb/coffer
    ///   coffer init -c /etc/coffer/config.toml usb
    ///   coffer init s3://acme-backups/web1 --policies /root/coffer-s3 && cat /root/coffer-s3/apply.sh
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
    /// Back up the sources named (default: every source in the config) to their targets.
    ///
    /// Needs only the recipients' public certificates and create rights on the targets.
    /// Unchanged files (same size, mtime, ctime, inode) are not read again; only new
    /// chunks are encrypted and uploaded. A source with several targets is read once for
    /// all of them; a failing target does not stop the others.
    ///
    /// A source with `command = [...]` stores what the command writes to its standard
    /// output as one file (named by `stream_name`, default the source's name); the
    /// command runs without a shell, and if it exits with a status other than 0 or is
    /// killed, no run is committed, its standard error is shown and coffer exits 1. A
    /// source with `stdin = true` stores standard input the same way, with --stdin only
    /// (a backup of every source leaves it out). Both are chunked like files, so a dump
    /// that changed in a few rows stores a few new chunks.
    ///
    ///   coffer backup                                 # every source
    ///   coffer backup etc home
    ///   coffer backup shop-db                         # command = ["mysqldump", "shop"]
    ///   pg_dump shop | coffer backup pg --stdin --stdin-name shop.sql
    ///   coffer cat --key admin.key.asc --source pg shop.sql | psql shop   # and back
    #[command(verbatim_doc_comment)]
    Backup(BackupArgs),
    /// List the runs stored on a target, and check them. Needs no key.
    ///
    /// Runs are listed by host and source, each one's oldest first by when the target
    /// stored them (the time a run's id claims is shown too, but anyone who can write to
    /// the target can claim any time); one host and source is read at a time, so a bucket
    /// many hosts share costs memory for one of them.
    /// Each run is checked without a key: its object list must be well formed and name
    /// it, its metafile must be complete and start as an encrypted message, and the time
    /// it claims must fit when it was stored. STATUS is ok, suspicious (it may have been
    /// planted) or damaged (it cannot be restored whole), with the reason; such a run is
    /// never restored by default, never counts toward prune's rules and is never deleted
    /// by prune. The exit status is 3 if any run is not ok.
    ///
    /// FILES, SIZE, ADDED (bytes of chunks the run stored first) and TOOK come from the
    /// run's object list, so they need no key either; `-` for runs made before coffer
    /// recorded them, and for runs not checked (--no-check).
    #[command(verbatim_doc_comment)]
    Runs(RunsArgs),
    /// Is every source backed up, and recently? For monitoring; needs no key.
    ///
    /// For every host and source on the target(s): when the newest run that checks out
    /// (as `coffer runs` checks) was stored and how old it is, and the runs that do not
    /// check out. A source is CRITICAL when it has no such run or it is older than its
    /// max-age (--max-age, or max_age in its [source] section), WARNING when older than
    /// --warn-age or when runs are suspicious or damaged; a target that cannot be read is
    /// UNKNOWN. The sources of the config's own host are expected: without runs, they
    /// are CRITICAL.
    ///
    /// The exit status follows the monitoring-plugin convention, so the command drops
    /// into Nagios or Icinga: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the worst wins; an
    /// unreadable target outranks a warning). The first line says it for people and
    /// plugins. --prometheus FILE writes the same for node_exporter's textfile collector
    /// (atomically). Run it on a monitoring machine with a credential that may list and
    /// read runs/ only.
    ///
    ///   coffer status --target s3://backups/web1 --max-age 26h
    ///   coffer status --max-age 26h --prometheus /var/lib/node_exporter/coffer.prom
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Print the shell completion script for bash, zsh or fish (also elvish, powershell).
    ///
    /// Install it where the shell looks:
    ///   coffer completions bash > /usr/share/bash-completion/completions/coffer
    ///   coffer completions zsh > /usr/local/share/zsh/site-functions/_coffer
    ///   coffer completions fish > ~/.config/fish/completions/coffer.fish
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Write the manual pages into DIR: coffer.1 and coffer-COMMAND.1 for each command.
    ///
    /// They are made from the same definitions as --help. Read one with
    /// `man -l DIR/coffer-backup.1`; the package installs them under /usr/share/man/man1.
    Man(ManArgs),
    /// Check backups: what is stored, without a key (--storage); with it, every byte (--data)
    /// or a run against a tree here (--against).
    ///
    /// --storage needs no key, only a credential that may list and read (a monitoring
    /// machine's): every run gets the keyless checks of `coffer runs`, every object a
    /// run's object list names must be on the target, and no pack may have a size no
    /// pack can have. This reads the listing and each run's object list, not the packs.
    /// With --read-data every pack is read and must hash (BLAKE3) to its name, and every
    /// metafile to what its object list records: the whole target is downloaded once.
    ///
    /// --data --key FILE (or gpg:FPR, or --gpg-agent) fetches, decrypts and checks every chunk of the newest run of
    /// each source (or --source, --host, --run), as restore checks them, writing nothing,
    /// and names every file that would not restore whole; --sample 5% checks a share of
    /// the packs, those earlier samples did not check first; --max-bytes and
    /// --max-requests cap what one run fetches. --against PATH --key FILE
    /// compares one run (--run, or the newest of --source) with the tree at PATH, as
    /// duplicity's verify does, and lists every difference.
    ///
    /// Each finding names the object and the runs it breaks, or the file. The exit status
    /// is 0 when everything checked out, 4 when something was found wrong, 1 on an error
    /// (the target could not be read, a wrong key).
    ///
    ///   coffer verify --storage --target s3://backups/web1
    ///   coffer verify --storage --read-data --json
    ///   coffer verify --data --key /root/coffer.key.asc --source home
    ///   coffer verify --data --key /root/coffer.key.asc --sample 5%
    ///   coffer verify --data --gpg-agent --source home
    ///   coffer verify --against /home --key /root/coffer.key.asc --source home
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// Restore a run (the newest of a source, a given run, or a metafile on disk).
    ///
    /// The whole metafile is checked before anything is written; then every chunk and
    /// file is checked against its BLAKE3. Files that cannot be restored are named and
    /// the exit status is 3; everything else is restored. Existing files are not
    /// overwritten unless --overwrite is given, and nothing below the destination is
    /// reached through a symbolic link already there.
    ///
    /// A run could have been forged by anyone holding the public key (a broken-into
    /// host, say), so what could hand out privileges is restored only when asked for:
    /// setuid and setgid bits of files need --setid, device nodes need --devices. Owners
    /// are set when restoring as root (--no-owner: never). Each left out is named, and
    /// the exit status is 3.
    ///
    /// The key: a file (--key admin.key.asc), or a key your gpg-agent holds (--key
    /// gpg:FINGERPRINT; --gpg-agent for any key of the GnuPG keyring): the agent, or the
    /// OpenPGP card or YubiKey it drives, decrypts each pack's session key, once per
    /// pack, and asks for the passphrase or PIN itself; the secret key never enters
    /// coffer. Every command that decrypts (cat, ls, find, dump, diff, verify) takes the
    /// same options.
    ///
    ///   coffer restore --key admin.key.asc --source home --to /srv/restore
    ///   coffer restore --key admin.key.asc --source etc --at 3D --to /tmp/etc nginx
    ///   coffer restore --key gpg:0123456789ABCDEF0123456789ABCDEF01234567 --source home \
    ///                  --to /srv/restore
    #[command(verbatim_doc_comment)]
    Restore(RestoreArgs),
    /// Write one file of a run to standard output, checked as restore checks it.
    ///
    /// Nothing is written to disk. Each chunk is decrypted and checked against its
    /// BLAKE3 before it is written, and the whole file at the end; if a chunk is missing
    /// or damaged, the bytes before it have been written, the error names the file and
    /// the exit status is 1 (so `coffer cat ... > file && use file` never uses a bad one).
    ///
    ///   coffer cat --key admin.key.asc --source etc nginx/nginx.conf
    ///   coffer cat --key admin.key.asc --source db --at 1D db.sql | mysql shop
    #[command(verbatim_doc_comment)]
    Cat(CatArgs),
    /// List the entries of a run (what is directly in each PATH, or all below with -R).
    ///
    /// Only the metafile is read, streamed: memory does not grow with the run. Names
    /// are shown escaped on one line each (control characters and bytes that are not
    /// UTF-8 as \xNN); --json prints one object per line with the path percent-encoded
    /// exactly as in the metafile (docs/FORMAT.md 4.5). Times are UTC.
    ///
    ///   coffer ls --key admin.key.asc --source etc -l nginx
    ///   coffer ls --key admin.key.asc --source home --at 2026-11-20 -R --json alice
    #[command(verbatim_doc_comment)]
    Ls(LsArgs),
    /// Write a run, or paths of it, to standard output as a tar archive.
    ///
    /// Names (any bytes), modes, owners, mtimes, symlinks, hard links, fifos and devices
    /// go in as tar keeps them; each file's content is checked as restore checks it
    /// while it is written. A chunk that does not check out stops the archive short,
    /// names the file and exits 1: tar -x then reports the archive truncated, so a
    /// damaged dump never unpacks as if whole. Standard output must not be a terminal.
    /// Tar only: a zip archive cannot be unpacked from a pipe (unzip needs to seek to
    /// its central directory) and has no place for owners, hard links or fifos.
    ///
    ///   coffer dump --key admin.key.asc --source etc nginx | tar -x -C /tmp/etc
    ///   coffer dump --key admin.key.asc --source home --at 3D alice | ssh host tar -x
    #[command(verbatim_doc_comment)]
    Dump(DumpArgs),
    /// What changed between two runs: added, removed, changed (content, metadata).
    ///
    /// Give the two runs with --run and --at (twice, or one of each), in any order: the
    /// older is compared with the newer. One alone is compared with the newest run.
    /// Only the two metafiles are read (content is compared by each file's recorded
    /// size and BLAKE3). Each line is `+ PATH` (added), `- PATH` (removed), `M PATH`
    /// (content, type or link target changed) or `U PATH` (only metadata), with what
    /// changed in parentheses; --json prints one object per line.
    ///
    ///   coffer diff --key admin.key.asc --source etc --at 1D
    ///   coffer diff --key admin.key.asc --source etc --at 2W --at 1W nginx
    ///   coffer diff --key admin.key.asc --run 20261120T0400 --run 20261121T0400 --json
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),
    /// Find paths in runs: which runs hold a path that matches, with its size and mtime.
    ///
    /// PATTERN is a glob (`*`, `?`, `[...]`, `**`); without a `/` it matches the last
    /// component of each path (as find -name does), with one the whole path relative to
    /// the source root. --regex takes a regular expression over the whole path instead.
    /// The newest run of each source is searched, or every run with --all-runs (a
    /// file's history), newest first; only metafiles are read. A run that cannot be read
    /// is named and the exit status is 3.
    ///
    ///   coffer find --key admin.key.asc nginx.conf
    ///   coffer find --key admin.key.asc --source etc --all-runs 'nginx/*.conf'
    ///   coffer find --key admin.key.asc --regex '^home/[^/]+/\.ssh/' --json
    #[command(verbatim_doc_comment)]
    Find(FindArgs),
    /// Measure how fast each stage of a backup, and a whole backup, runs on this machine.
    ///
    /// The input (PATH, or generated data) is read into memory first, at most 1 GiB, so
    /// the stage figures measure the processor, not the disk. Every figure is the median
    /// of 5 runs, in MB/s: 10^6 bytes of input per second. Nothing is kept: the whole
    /// backups use a throwaway key, a temporary index and a target in memory or in the
    /// temporary directory (TMPDIR), deleted when the bench ends.
    ///
    /// The sections:
    ///   chunking     FastCDC, the 2016 and the 2020 variant, with three chunk size bounds
    ///                (min/avg/max), one core. The spread shows how evenly each cuts; "at
    ///                max" chunks were cut at the maximum, not where the content says.
    ///                Backup uses v2020 with 256KiB/1MiB/4MiB (marked *): the "default
    ///                chunks" the next sections work on.
    ///   hashing      BLAKE3 of the default chunks, one core.
    ///   compression  zstd where it saves at least a tenth, as backup does, one core.
    ///   encryption   OpenPGP (AES-256) with one pack's session key, on one core and on
    ///                all cores; then compression and encryption on all cores with a
    ///                session per pack, as backup does.
    ///   pipeline     whole backups (walk, read, chunk, hash, dedup, compress, encrypt,
    ///                pack, store, metafile), each with a fresh index: of the input into
    ///                memory, then of as much pseudo-random data to a folder target in
    ///                the temporary directory (written and synced as file:// targets are).
    ///
    /// Encryption on all cores is the ceiling for a whole backup of incompressible data:
    /// the pipeline's share of it tells how much the other stages, the disk and the
    /// plumbing cost.
    ///
    /// Without PATH the input is generated: half pseudo-random (incompressible), half
    /// log-like text (compressible), the same bytes on every machine, in files of up to
    /// 16 MiB written to a temporary directory for the whole backups. With the default
    /// 256 MiB a run takes about 20 seconds on two cores. Other work on the machine
    /// skews the figures: compare runs made under the same conditions.
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Delete the runs that retention rules do not keep. Needs no key.
    ///
    /// Runs are counted per host and source: two hosts with a source of the same name do
    /// not share a count. Rules come from the command line, else from the keep_* keys of
    /// the source's config section; groups with no rules are kept whole. A run is kept if
    /// any rule keeps it, and the newest run of each host and source is always kept:
    ///
    ///   --keep-last N      the N newest runs
    ///   --keep-hourly N    the newest run of each of the N latest hours that have runs
    ///   --keep-daily N     ... days, --keep-weekly N ... ISO weeks (Monday to Sunday),
    ///   --keep-monthly N   ... months, --keep-yearly N ... years (all in UTC)
    ///   --keep-within D    every run started less than D (e.g. 36h, 14d, 2w) before the
    ///                      newest run of its group
    ///
    /// Only metafiles and object lists are deleted; `coffer gc` then deletes the data no
    /// run needs any more. Try --dry-run first: it prints every run, kept or not, and why.
    /// Needs list and delete rights on the target.
    ///
    /// On an S3 target whose config section sets object_lock_retention, prune also keeps
    /// the Object Lock of every run it keeps (its metafile, object list and packs) until
    /// its calendar rules stop keeping it, and at least half the retention ahead
    /// (README, 'Per retention tier'); it needs s3:GetObjectRetention and
    /// s3:PutObjectRetention then.
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Delete the stored objects that no run references. Needs no key.
    ///
    /// Reads the runs' plain object lists (no secret key needed, and none is used) and
    /// deletes every data object none of them lists and that the target stored more than
    /// the grace period ago. The grace period protects backups running now and the local
    /// indexes of every host: it must be at least dedup_max_age + max_run_time of every
    /// backup (each run records its own; the defaults make 14d), and gc uses exactly that
    /// unless --grace asks for more. docs/FORMAT.md (section 10) gives the rule.
    ///
    /// Safe to run while hosts back up. Needs list, read and delete rights on the target:
    /// a host's put-only credential is refused, and nothing is deleted.
    #[command(verbatim_doc_comment)]
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write the key files into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Base name of the key files, also the key's user id
    #[arg(long, default_value = "coffer")]
    pub name: String,
    /// Make an RSA key of this size (3072 or 4096) instead of Ed25519/Cv25519
    #[arg(long, value_name = "BITS", value_parser = ["3072", "4096"])]
    pub rsa: Option<String>,
    /// Leave the secret key unprotected (for tests and throwaway keys only)
    #[arg(long)]
    pub no_passphrase: bool,
    /// How long the key lasts: a duration (3y, 18M, 90d), a date (2030-12-31), or never.
    /// Backups warn 30 days before a recipient expires, and fail after
    #[arg(long, value_name = "WHEN", default_value = "3y")]
    pub expires: String,
    /// Read the passphrase from the first line of this file
    #[arg(long, value_name = "FILE", conflicts_with = "no_passphrase")]
    pub passphrase_file: Option<PathBuf>,
    /// Make a host's signing key (Ed25519, sign only, no passphrase):
    /// NAME.sign.key.asc and NAME.sign.pub.asc
    #[arg(long, conflicts_with_all = ["passphrase_file", "no_passphrase"])]
    pub sign_only: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Target name from the config, or a target URL
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// For an s3:// target: write into DIR the IAM policies of the host (put-only,
    /// scoped to the target's prefix), the admin and the monitor (read-only, runs/
    /// only), the bucket policy that refuses overwrites, the lifecycle rule, apply.sh
    /// (the AWS CLI commands that set them up) and config skeletons; the target is not
    /// contacted
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// With --policies: also apply them, with the target's credential (an administrator's):
    /// versioning on, Object Lock on if the config sets a retention, the bucket policy,
    /// the lifecycle rule, and an IAM user per role with its policy and, the first time,
    /// an access key written to DIR/ROLE.credentials (readable by you alone, never
    /// printed). Running it again changes nothing but the policies
    #[arg(long, requires = "policies")]
    pub apply: bool,
    /// With --apply: where the IAM API is [default: the target's endpoint if it has one
    /// (an S3-compatible server), else https://iam.amazonaws.com/]
    #[arg(long, value_name = "URL", requires = "apply")]
    pub iam_endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Sources to back up [default: all]
    #[arg(value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// Forget what the local index knows of the targets' contents and store everything
    /// again (what `coffer gc` advises when a target lost packs this host cannot see)
    #[arg(long)]
    pub forget_cache: bool,
    /// Store standard input as the one file of a run of SOURCE (a source with stdin =
    /// true). The shell, not coffer, knows whether the program writing into the pipe
    /// succeeded: use `set -o pipefail`, or a command = [...] source that coffer checks
    #[arg(long)]
    pub stdin: bool,
    /// The name standard input is stored under [default: the source's stream_name, else
    /// its name]
    #[arg(long, value_name = "NAME", requires = "stdin")]
    pub stdin_name: Option<String>,
    /// Commit a run of a command or stdin source that gave no data at all [default:
    /// refused, exit 1: an empty dump is what a failed one looks like]
    #[arg(long)]
    pub allow_empty: bool,
    /// Leave out what PATTERN matches, for this run, in every tree source backed up
    /// (the rules of the config's `ignore`: `*.log` matches a name anywhere,
    /// `var/cache` a path from the source's root); may be given again
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Leave out what the patterns in FILE match (one per line; blank lines and lines
    /// starting with # are skipped); may be given again
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<std::path::PathBuf>,
    /// Say what the backup would read and store (files to read, new chunks and bytes)
    /// from the source and the local index alone: nothing is uploaded or committed, no
    /// request is made of the target (tree sources only)
    #[arg(long, conflicts_with_all = ["stdin", "forget_cache"])]
    pub dry_run: bool,
    /// Print the statistics as one JSON object on standard output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A file, or a directory whose regular files are read (recursively) [default:
    /// generated data]
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// How much data to generate without PATH, e.g. 64MiB or 1GiB (at most 1GiB)
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "256MiB",
        value_parser = coffer::parse_size,
        conflicts_with = "path"
    )]
    pub size: u64,
    /// Print every figure as one JSON object on standard output
    #[arg(long)]
    pub json: bool,
}

/// Whose signatures runs must carry (restore, verify, prune, status, runs).
#[derive(Debug, Args, Clone, Default)]
pub struct TrustArgs {
    /// Trust only runs signed by this certificate (repeatable) [default: the config's
    /// `signers`; none: runs need no signature]
    #[arg(long, value_name = "FILE")]
    pub signer: Vec<PathBuf>,
    /// Accept runs that are unsigned or signed by a key that is not trusted (their
    /// signature state is still shown)
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Target name from the config, or a target URL [default: every target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Only runs of this source
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
    /// Only runs made by this host
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// List from object names alone: do not read each run's object list and the start
    /// of its metafile (two small reads per run) to check it
    #[arg(long)]
    pub no_check: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Target name from the config, or a target URL [default: every target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// CRITICAL when a source's newest complete run is older (e.g. 26h)
    #[arg(long, value_name = "DUR", value_parser = coffer::parse_duration)]
    pub max_age: Option<std::time::Duration>,
    /// WARNING when it is older than this
    #[arg(long, value_name = "DUR", value_parser = coffer::parse_duration)]
    pub warn_age: Option<std::time::Duration>,
    /// Also write the status to FILE in Prometheus text format (replaced atomically)
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<std::path::PathBuf>,
    /// Forget the newest runs earlier checks saw on the targets (after a rollback was
    /// looked into and the target accepted as it is); this check records them anew
    #[arg(long)]
    pub accept_rollback: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").args(["storage", "data", "against"]).required(true).multiple(true)))]
#[command(group(clap::ArgGroup::new("secret").args(["key", "gpg_agent"])))]
pub struct VerifyArgs {
    /// Check what is stored, without a key
    #[arg(long)]
    pub storage: bool,
    /// With the key (--key or --gpg-agent): decrypt and check every chunk of the runs
    /// chosen (default: the newest run of each source), writing nothing
    #[arg(long, requires = "secret")]
    pub data: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// --data: only this source's runs
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
    /// --data: only runs made by this host
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// --data: this run (its id, or a prefix only one run's id has)
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// --data, --against: the newest run that started at or before WHEN: an age (3D,
    /// 2W, 1M, 12h), a date (2026-11-20: up to the end of that day, UTC) or a time
    /// (2026-11-20T04:00Z)
    #[arg(long, value_name = "WHEN", conflicts_with = "run", value_parser = when)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// --data: check only this share of each run's packs (e.g. 5%), those not checked
    /// by earlier samples first (recorded in the state directory), so that repeated
    /// runs cover every pack
    #[arg(long, value_name = "PERCENT", requires = "data", value_parser = percent)]
    pub sample: Option<f64>,
    /// --data: stop once this much was fetched from the target (e.g. 10GiB; cost on S3)
    #[arg(long, value_name = "SIZE", requires = "data", value_parser = coffer::parse_size)]
    pub max_bytes: Option<u64>,
    /// --data: stop once this many requests were made to the target
    #[arg(long, value_name = "N", requires = "data")]
    pub max_requests: Option<u64>,
    /// With the key: compare a run (--run, or the newest of --source) with the tree at
    /// PATH: type, content, link target, mode, owner, mtime, and what is only here
    #[arg(
        long,
        value_name = "PATH",
        requires = "secret",
        conflicts_with = "data"
    )]
    pub against: Option<PathBuf>,
    /// Also read every pack and metafile and check their BLAKE3 (downloads everything)
    #[arg(long)]
    pub read_data: bool,
    /// Target name from the config, or a target URL [default: every target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Target name from the config, or a target URL [default: every target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Only runs of these sources [default: all on the target]
    #[arg(long, value_name = "S")]
    pub source: Vec<String>,
    /// Retention rules (--keep-last N and the others; see above)
    #[command(flatten)]
    pub keep: coffer::Retention,
    /// Print what would be kept and deleted, and why; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Target name from the config, or a target URL [default: every target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Keep unreferenced objects younger than DUR (e.g. 14d) [default: the shortest safe
    /// one, dedup_max_age + max_run_time]
    #[arg(long, value_name = "DUR", value_parser = coffer::parse_duration)]
    pub grace: Option<std::time::Duration>,
    /// Count what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete unreferenced packs younger than the minimum storage duration of the
    /// target's storage_class (30 days for STANDARD_IA, 90 for GLACIER, 180 for
    /// DEEP_ARCHIVE): S3 bills the rest of that duration anyway
    #[arg(long)]
    pub early_delete: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").args(["key", "gpg_agent"]).required(true)))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Target name from the config, or a target URL [default: the source's only target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Restore the newest run of this source (or --run)
    #[arg(
        long,
        value_name = "S",
        required_unless_present_any = ["index", "run"],
        conflicts_with = "index"
    )]
    pub source: Option<String>,
    /// Restore this run (see `coffer runs`): its id, or a prefix only one run's id has
    #[arg(long, value_name = "ID", conflicts_with = "index")]
    pub run: Option<String>,
    /// Restore the newest run of --source that started at or before WHEN: an age (3D =
    /// three days ago, 2W, 1M, 12h), a date (2026-11-20: up to the end of that day, UTC)
    /// or a time (2026-11-20T04:00Z)
    #[arg(
        long,
        value_name = "WHEN",
        requires = "source",
        conflicts_with_all = ["run", "index"],
        value_parser = when
    )]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Only consider runs made by this host
    #[arg(long, value_name = "H", conflicts_with = "index")]
    pub host: Option<String>,
    /// Restore from a metafile on disk (as stored, or decrypted with gpg -d)
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
    /// Destination directory
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Replace files that already exist in the destination (and give existing
    /// directories their recorded owner, mode and mtime)
    #[arg(long)]
    pub overwrite: bool,
    /// Keep the setuid and setgid bits of files [default: dropped, counted, exit status 3]
    #[arg(long)]
    pub setid: bool,
    /// Create device nodes [default: not created, named, exit status 3]
    #[arg(long)]
    pub devices: bool,
    /// Do not set recorded owners, even as root [default: set them when run as root]
    #[arg(long)]
    pub no_owner: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the statistics as JSON
    #[arg(long)]
    pub json: bool,
    /// Restore only these paths (relative to the source root) and what is below them
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// The secret key a restore-side command decrypts with: a key file, or a key the user's
/// gpg-agent holds.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The secret key: a file (NAME.key.asc from `coffer keygen`, or `gpg
    /// --export-secret-keys --armor`), or gpg:FINGERPRINT for a key your gpg-agent holds
    /// (GnuPG keyring, OpenPGP card, YubiKey), which then never enters coffer's memory
    #[arg(long, value_name = "FILE|gpg:FPR")]
    pub key: Option<PathBuf>,
    /// Decrypt through your gpg-agent with any secret key of the GnuPG keyring (as gpg
    /// -d does); needs the certificates in the keyring (`gpg --import`)
    #[arg(long, conflicts_with_all = ["key", "passphrase_file"])]
    pub gpg_agent: bool,
    /// Read the key file's passphrase from the first line of this file [default:
    /// $COFFER_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Which run a browsing command reads, and the key that opens it.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").args(["key", "gpg_agent"]).required(true)))]
pub struct ChosenRun {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Target name from the config, or a target URL [default: the source's only target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// The newest run of this source (or --run, --at)
    #[arg(long, value_name = "S", required_unless_present = "run")]
    pub source: Option<String>,
    /// This run (see `coffer runs`): its id, or a prefix only one run's id has
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// The newest run of --source that started at or before WHEN (3D, 2026-11-20,
    /// 2026-11-20T04:00Z; see `coffer restore --help`)
    #[arg(long, value_name = "WHEN", requires = "source", conflicts_with = "run", value_parser = when)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Only consider runs made by this host
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    pub chosen: ChosenRun,
    /// The file, relative to the source root
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").args(["key", "gpg_agent"]).required(true)))]
pub struct DiffArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Target name from the config, or a target URL [default: the source's only target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// The source whose runs to compare (needed with --at, or without --run)
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
    /// Only consider runs made by this host
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// A run to compare (its id, or a prefix only one run's id has); up to twice
    #[arg(long, value_name = "ID")]
    pub run: Vec<String>,
    /// The newest run of --source that started at or before WHEN (see `coffer restore
    /// --help`); up to twice
    #[arg(long, value_name = "WHEN", requires = "source", value_parser = when)]
    pub at: Vec<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Only these paths and what is below them
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub chosen: ChosenRun,
    /// Paths relative to the source root, with all below them [default: the whole run]
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub chosen: ChosenRun,
    /// Long listing: type and mode, owner/group, size, mtime (UTC), link targets
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// Everything below the paths, not only what is directly in them
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Paths relative to the source root [default: the root]
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").args(["key", "gpg_agent"]).required(true)))]
pub struct FindArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Target name from the config, or a target URL [default: the source's only target]
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Only this source's runs [default: every source]
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
    /// Only runs made by this host
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Every run, newest first, not only the newest of each source
    #[arg(long)]
    pub all_runs: bool,
    /// PATTERN is a regular expression over the whole path
    #[arg(long)]
    pub regex: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// One JSON object per line: the run, and the entry as `coffer ls --json` gives it
    #[arg(long)]
    pub json: bool,
    /// What to look for
    #[arg(value_name = "PATTERN")]
    pub pattern: String,
}

/// `--at`: a point in time, ages counted back from now.
fn when(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    coffer::parse_when(s, chrono::Utc::now()).map_err(|e| e.to_string())
}

/// `--sample`: a percentage in (0, 100], with or without `%`; the share as a fraction.
fn percent(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage; write e.g. 5%"))?;
    if n > 0.0 && n <= 100.0 {
        Ok(n / 100.0)
    } else {
        Err(format!("{s:?}: give a share above 0% and at most 100%"))
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}
