//! `sd`: SmartDomains for a person at a terminal.

use clap::{Parser, Subcommand};
use sd_batch::frontend;
use sd_host::owner::Owner;
use sd_host::user_files::UserFiles;
use sd_languages::jdl::JobDescription;
use sd_request::JobRequest;
use sd_site::SiteConfig;
use sd_vmm::deployment;
use sd_vmm::guest_link::JobOutcome;
use sd_vmm::image_store::ImageStore;
use sd_vmm::status;
use smartdomains::{job, pool};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit statuses: the request refused (bad JDL, policy), the site failed
/// (config, hypervisor, disk). One table for every command: sd_site::ExitCode.
const EXIT_REFUSED: u8 = sd_site::ExitCode::REFUSED as u8;
const EXIT_SITE_FAULT: u8 = sd_site::ExitCode::SITE as u8;

#[derive(Parser)]
#[command(
    name = "sd",
    version,
    about = "Run grid jobs inside the virtual machine their VO asked for",
    long_about = "SmartDomains boots, for each job, the execution environment its JDL asks for \
(VO image, memory, vCPUs, disk) as a real virtual machine, checked against the site's policy, \
runs the job inside it and leaves nothing behind.",
    after_help = "Examples:\n  sd run jobs/hello.jdl            run a job in its own VM\n  \
sd check-config /etc/smartdomains/site.yaml\n  sd status                        deployments on this host\n  \
sd cleanup                       remove what crashed runs left behind\n\n\
The site config is $SD_CONFIG, else /etc/smartdomains/site.yaml (scripts/setup writes it)."
)]
struct Cli {
    /// Site configuration file.
    #[arg(long, global = true, env = "SD_CONFIG")]
    config: Option<PathBuf>,
    /// Log what happens, on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a request against this site's policy, as the prolog would for
    /// you: print the environment it resolves to (image, kernel, memory,
    /// vCPUs, disk, networks), or why it is refused (exit status 2). Boots
    /// nothing, creates nothing.
    Check {
        /// A JDL file, or a catalogue image with networks (`busybox:nat`).
        request: String,
        /// The VO to act for, when the JDL names none (or for an image).
        #[arg(long)]
        vo: Option<String>,
        /// Print one JSON object: {"admitted": true, "environment": ...} or
        /// {"admitted": false, "error": ...}.
        #[arg(long)]
        json: bool,
    },
    /// Run a JDL job in its own VM: prolog, job, epilog in one process.
    ///
    /// The job's stdout and stderr arrive here, byte for byte and separate;
    /// sd's exit status is the job's (128+N if a signal N killed it, 2 if the
    /// request is refused, 125 if the site failed). InputSandbox paths are
    /// relative to the JDL's directory; OutputSandbox files land in
    /// --output-dir. Ctrl-C destroys the VM and cleans up.
    Run {
        /// The job description (gLite JDL).
        jdl: PathBuf,
        /// Where OutputSandbox, StdOutput and StdError files go.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
        /// Deployment id (default: run-<pid>-<time>).
        #[arg(long)]
        id: Option<String>,
    },
    /// Check a site config: syntax, unknown keys, values, catalogue files.
    ///
    /// With --print KEY, prints one value of the loaded config instead, with
    /// defaults filled in and paths absolute: for scripts (`sd check-config
    /// --print state_dir`, `--print qemu.binary`, `--print vos.demo.max_memory_mib`).
    CheckConfig {
        /// Default: the --config / $SD_CONFIG / /etc/smartdomains/site.yaml file.
        file: Option<PathBuf>,
        /// A dotted key of the resolved config; a value that is no single
        /// string or number prints as JSON.
        #[arg(long, value_name = "KEY")]
        print: Option<String>,
    },
    /// Undo deployments from their journals (after a crash or a kill).
    ///
    /// Without ID: every deployment whose owner is gone (its `sd run`, or
    /// the condor_starter of its HTCondor job; an owner is its pid and start
    /// time, so a reused pid is not it). Idempotent.
    Cleanup {
        id: Option<String>,
        /// Every deployment on this host, even those still in use.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// List the deployments on this host, or the members of pool NAME.
    Status {
        /// A pool started with `sd start`: its members, state, memory, uptime.
        name: Option<String>,
    },
    /// Start pool NAME from a description (YAML or SmartFrog .sf): every
    /// domain in the described order. Returns when every member is up, or
    /// when everything started has been rolled back after a failure.
    ///
    /// A Sequence starts each member once the previous one's agent answers;
    /// a Compound boots all its members at once. Members are deployments
    /// `pool-NAME-MEMBER`; they run on after `sd start` returns, until `sd
    /// terminate NAME`, watched by a monitor process: a member that misses
    /// sfLivenessFactor beats (one every sfLivenessDelay s) terminates the
    /// whole pool, in reverse creation order (LOG_DIR/pool-NAME.log says why).
    Start {
        name: String,
        file: PathBuf,
        #[arg(long = "library", value_name = "FILE")]
        library: Vec<PathBuf>,
        /// VO of members without a `vo` attribute (default: the site's default_vo).
        #[arg(long)]
        vo: Option<String>,
    },
    /// Stop pool NAME: its liveness monitor, then its members in reverse
    /// creation order, gracefully, then its record. Idempotent: a pool that
    /// is not there is a success.
    Terminate { name: String },
    /// The liveness monitor of pool NAME (`sd start` runs it, detached).
    #[command(hide = true)]
    PoolMonitor { name: String },
    /// A pool member on a node of a Slurm allocation (`sd start` runs it as
    /// a job step there).
    #[command(hide = true)]
    PoolMember {
        #[command(subcommand)]
        action: PoolMemberAction,
    },
    /// Print a description (YAML, or SmartFrog's .sf text) fully resolved:
    /// templates extended, references followed, defaults filled in.
    ///
    /// Nothing is deployed: this is what `sd start` will act on. Library files
    /// (the site's templates) are read before FILE, later ones overriding.
    Describe {
        file: PathBuf,
        #[arg(long = "library", value_name = "FILE")]
        library: Vec<PathBuf>,
    },
    /// Run a command in a running domain of yours, with this process's stdin,
    /// stdout, stderr and environment; sd's exit status is the command's.
    ///
    /// NAME is a deployment id as `sd status` lists it (`sd run --id ID`, a
    /// Slurm job's `slurm-JOBID`), or POOL/MEMBER for a member of a pool
    /// started with `sd start`: MEMBER is its name in the description (the
    /// last component of its path, e.g. `worker1`) or its full path
    /// (`sfConfig:farm:worker1`, or `farm:worker1`). The command runs in the
    /// VO image as it is there, in --cwd; SIGINT, SIGTERM, SIGHUP, SIGQUIT
    /// and SIGUSR1/2 go to it. Only the domain's owner and root may. Exit
    /// status: the command's (128+N if signal N killed it), 2 if refused (not
    /// yours, no such deployment or member), 125 if the site failed.
    #[command(after_help = "Examples:\n  sd exec farm/db -- ps\n  \
sd exec run-42 -- sh -c 'grep MemTotal /proc/meminfo'\n  \
tar c data | sd exec farm/worker1 -- tar x -C /tmp")]
    Exec {
        /// A deployment id, or POOL/MEMBER.
        name: String,
        /// Working directory in the guest.
        #[arg(long, default_value = "/")]
        cwd: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print the guest's console log (kernel, init, agent), escaped:
    /// control bytes and anything not ASCII shown as \xNN, never sent raw
    /// to the terminal.
    ///
    /// NAME as for `sd exec`; only the domain's owner and root may. With
    /// --follow, keeps printing as the log grows, until the deployment is gone.
    Console {
        /// A deployment id, or POOL/MEMBER.
        name: String,
        /// Keep printing as the log grows, until the deployment is gone.
        #[arg(short, long)]
        follow: bool,
    },
    /// Change a running domain, or every member of a pool, without a restart.
    ///
    /// memory=MiB sets the guest's memory (its balloon), within the VO's
    /// limit and at most what it booted with; liveness=SECONDS[,factor=N]
    /// how often the pool's monitor beats a member and how many beats it may
    /// miss; save=true|false (and save_as=NAME) whether its teardown keeps
    /// the disk as a new image. Only the domain's owner and root may.
    #[command(after_help = "Examples:\n  sd set farm/worker1 memory=256\n  \
sd set farm liveness=2,factor=3\n  sd set run-42 save=true save_as=my-image")]
    Set {
        /// A deployment id, POOL/MEMBER, or POOL (every member).
        name: String,
        /// SETTING=VALUE, one or more.
        #[arg(required = true, value_name = "SETTING=VALUE")]
        settings: Vec<String>,
    },
    /// Serve the console API (root): deployments and pools, live, and their
    /// settings to change, over HTTP with an OpenAPI document at
    /// /api/openapi.json. `sd console NAME` is a domain's serial console;
    /// this is the node's management console.
    ///
    /// Each user has a token (made for every user with a deployment here);
    /// `sd serve --token` prints the URL with one's own.
    Serve {
        /// Address to listen on (localhost unless told otherwise).
        #[arg(long, default_value = smartdomains::console::DEFAULT_LISTEN)]
        listen: String,
        /// Print the URL with one's own token, and exit.
        #[arg(long)]
        token: bool,
    },
    /// List the image catalogue and the saved images of the store.
    ///
    /// A job saves its disk as a new image with `SaveImage = true;` (and
    /// optionally `SaveAs = "name";`) in its VirtualEnvironment; later jobs of
    /// the same VO name it as their Image.
    Images {
        #[command(subcommand)]
        action: Option<ImagesAction>,
    },
    /// Booted templates (QEMU): domains start as copy-on-write clones of
    /// them, where the site says `templates: auto`.
    Template {
        #[command(subcommand)]
        action: TemplateAction,
    },
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Build the template of catalogue image IMAGE (its VO's default memory
    /// and vCPUs), unless a valid one exists.
    Build {
        image: String,
        #[arg(long)]
        vo: Option<String>,
    },
    /// Remove every template of IMAGE (RAM file included).
    Rm { image: String },
}

#[derive(Subcommand)]
enum PoolMemberAction {
    /// Deploy the plan on stdin here, report, beat it, tear it down on SIGUSR1/2.
    Run,
    /// Undo deployment ID here from its journal.
    Clean { id: String },
}

#[derive(Subcommand)]
enum ImagesAction {
    /// Remove a saved image (root, or the user who saved it). Catalogue
    /// images belong to the site config and are not removed here.
    Rm { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SD_LOG").unwrap_or_else(|_| level.into()),
        )
        .with_target(false);
    // A pool monitor's log is a file read later: its lines carry the time,
    // and no colours.
    if matches!(
        cli.command,
        Command::PoolMonitor { .. } | Command::PoolMember { .. }
    ) {
        subscriber.with_ansi(false).init();
    } else {
        subscriber.without_time().init();
    }
    // Saving and decompressing images draw a bar at a terminal.
    sd_vmm::image_store::progress::set_ui(smartdomains::progress::terminal_bar);
    let config = cli.config.clone().unwrap_or_else(SiteConfig::default_path);
    match cli.command {
        Command::CheckConfig { file, print } => match print {
            Some(key) => print_config_value(&file.unwrap_or(config), &key),
            None => check_config(&file.unwrap_or(config)),
        },
        Command::Describe { file, library } => describe(&file, &library),
        command => {
            let site = match SiteConfig::load(&config) {
                Ok(s) => s,
                Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
            };
            match command {
                Command::Run {
                    jdl,
                    output_dir,
                    id,
                } => run(&site, &jdl, &output_dir, id),
                Command::Check { request, vo, json } => check(&site, &request, vo.as_deref(), json),
                Command::Cleanup { id, all } => cleanup(&site, id, all),
                Command::Status { name: None } => status(&site),
                Command::Status { name: Some(name) } => pool_status(&site, &name),
                Command::Start {
                    name,
                    file,
                    library,
                    vo,
                } => start(&site, &name, &file, &library, vo.as_deref()),
                Command::Terminate { name } => terminate(&site, &name),
                Command::PoolMember {
                    action: PoolMemberAction::Run,
                } => ExitCode::from(pool::run_step(&site) as u8),
                Command::PoolMember {
                    action: PoolMemberAction::Clean { id },
                } => ExitCode::from(pool::clean_step(&site, &id) as u8),
                Command::PoolMonitor { name } => match pool::run_monitor(&site, &name) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
                },
                Command::Exec { name, cwd, command } => exec(&site, &name, &cwd, command),
                Command::Console { name, follow } => console(&site, &name, follow),
                Command::Set { name, settings } => set(&site, &name, &settings),
                Command::Serve { listen, token } => serve(site, &listen, token),
                Command::Images { action: None } => images(&site),
                Command::Images {
                    action: Some(ImagesAction::Rm { name }),
                } => remove_image(&site, &name),
                Command::Template {
                    action: TemplateAction::Build { image, vo },
                } => template_build(&site, &image, vo.as_deref()),
                Command::Template {
                    action: TemplateAction::Rm { image },
                } => match sd_vmm::template::remove(&site, &image) {
                    Ok(n) => {
                        println!("removed {n} template(s) of {image}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
                },
                Command::CheckConfig { .. } | Command::Describe { .. } => unreachable!(),
            }
        }
    }
}

fn check(site: &SiteConfig, request: &str, vo: Option<&str>, json: bool) -> ExitCode {
    let result = smartdomains::check::check(site, request, vo);
    if json {
        let answer = match &result {
            Ok(env) => serde_json::json!({"admitted": true, "environment": env}),
            Err(e) => serde_json::json!({"admitted": false, "error": e.to_string()}),
        };
        println!("{answer}");
    }
    match result {
        Ok(env) => {
            if !json {
                print!("{}", smartdomains::check::describe(&env));
            }
            ExitCode::SUCCESS
        }
        Err(_) if json => ExitCode::from(EXIT_REFUSED),
        Err(e) => fail(EXIT_REFUSED, &e.to_string()),
    }
}

fn template_build(site: &SiteConfig, image: &str, vo: Option<&str>) -> ExitCode {
    let env = match smartdomains::check::check(site, image, vo) {
        Ok(env) => env,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let qemu = sd_vmm::deployment::qemu_of(site);
    let spec = sd_vmm::deployment::template_boot_spec(site, &env);
    let started = std::time::Instant::now();
    match sd_vmm::template::build(site, &qemu, &env, &spec) {
        Ok((t, built)) => {
            println!(
                "template {} {} ({:.1} s)",
                t.dir.display(),
                if built { "built" } else { "is valid: kept" },
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("sd: {message}");
    ExitCode::from(code)
}

fn describe(file: &Path, library: &[PathBuf]) -> ExitCode {
    match sd_languages::description::resolve_file(file, library) {
        Ok(resolved) => match serde_saphyr::to_string(&resolved) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(
                EXIT_SITE_FAULT,
                &format!("cannot print the description: {e}"),
            ),
        },
        Err(e) => fail(EXIT_REFUSED, &e.to_string()),
    }
}

/// `sd check-config --print KEY`: the value at the dotted KEY of the
/// resolved config (what SmartDomains itself uses, defaults included).
fn print_config_value(path: &Path, key: &str) -> ExitCode {
    let site = match SiteConfig::load(path) {
        Ok(s) => s,
        Err(e) => return fail(1, &e.to_string()),
    };
    let mut value = match serde_json::to_value(&site) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
    };
    for part in key.split('.') {
        let Some(next) = value.get_mut(part).map(std::mem::take) else {
            return fail(
                EXIT_REFUSED,
                &format!("{}: no key {key:?} in the resolved config", path.display()),
            );
        };
        value = next;
    }
    match value {
        serde_json::Value::String(s) => println!("{s}"),
        serde_json::Value::Null => println!(),
        other => println!("{other}"),
    }
    ExitCode::SUCCESS
}

fn check_config(path: &Path) -> ExitCode {
    match SiteConfig::load(path) {
        Ok(site) => {
            let missing = site.check_files(&sd_vmm::storage_lvm::base_problem);
            for m in &missing {
                eprintln!("sd: {m}");
            }
            if missing.is_empty() {
                let networks: Vec<String> = site
                    .networks
                    .values()
                    .map(|n| match n.kind.name() {
                        kind if kind == n.name => kind.to_string(),
                        kind => format!("{} ({kind})", n.name),
                    })
                    .collect();
                println!(
                    "{}: OK ({} images, {} VOs, networks: {})",
                    path.display(),
                    site.images.len(),
                    site.vos.len(),
                    if networks.is_empty() {
                        "none".to_string()
                    } else {
                        networks.join(", ")
                    }
                );
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(1, &e.to_string()),
    }
}

fn run(site: &SiteConfig, jdl_path: &Path, output_dir: &Path, id: Option<String>) -> ExitCode {
    // Whom we act for: the caller, as the user database knows it (root: any VO).
    let owner = match Owner::current() {
        Ok(o) => o,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let files = UserFiles::caller();
    let tty = std::io::stderr().is_terminal();
    // Front end → request → policy: all checks before anything is created.
    let text = match files.read_text(jdl_path, site.max_request_bytes, "max_request_bytes") {
        Ok(t) => t,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let jdl = match JobDescription::parse(&text, jdl_path) {
        Ok(j) => j,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let request = JobRequest {
        vo: jdl.virtual_organisation.clone(),
        environment: jdl.virtual_environment.clone().unwrap_or_default(),
    };
    let env = match frontend::admit_parsed(site, &owner, &request) {
        Ok(env) => env,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let id = id.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("run-{}-{}", std::process::id(), t.as_millis())
    });
    let jdl_dir = jdl_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let plan = match job::plan(&jdl, jdl_dir, &id) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let inputs = match job::open_inputs(&plan, &files) {
        Ok(i) => i,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };

    guard_signals(site.clone(), id.clone());
    if tty {
        eprintln!(
            "sd: booting {} for VO {} ({} MiB, {} vCPU) as deployment {id}",
            env.image.name, env.vo, env.memory_mib, env.vcpus
        );
    }
    let uid = files.uid;
    let me = sd_host::peer::ProcessStamp::of(std::process::id() as i32);
    let deployment = match frontend::boot(site, &id, &env, uid, me) {
        Ok(d) => d,
        Err(e) => return fail(sd_site::ExitCode::of(e.fault()) as u8, &e.to_string()),
    };
    if tty {
        eprintln!(
            "sd: {} ready in {:.1} s ({}, {}), running {}",
            env.hostname,
            deployment.boot_time.as_secs_f64(),
            deployment.acceleration,
            deployment.start,
            jdl.executable
        );
    }
    let outcome = job::run(
        &deployment.link,
        &plan,
        inputs,
        &files,
        output_dir,
        // Not locked for the whole job: log lines from other threads (the
        // domain watcher, libxl's logger) write to stderr too.
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    let succeeded = matches!(outcome, Ok(JobOutcome::Exited(0)));
    let teardown = deployment.teardown(site, succeeded);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let code = if e.is_user_error() {
                EXIT_REFUSED
            } else {
                EXIT_SITE_FAULT
            };
            // The link breaks when the guest's agent or kernel dies: the
            // console log says which.
            let hint = match e {
                job::JobError::Link(_) => format!(
                    " (the guest's console log: {})",
                    deployment::console_log_path(site, &id).display()
                ),
                _ => String::new(),
            };
            return fail(code, &format!("job {id}: {e}{hint}"));
        }
    };
    match teardown {
        Ok(Some(Ok(image))) => eprintln!(
            "sd: the job's disk is saved as image {:?} ({} MiB, {} MiB compressed): VO {} may now ask for Image = \"{}\"",
            image.name,
            image.size >> 20,
            image.compressed_size >> 20,
            image.vo,
            image.name
        ),
        Ok(Some(Err(e))) => eprintln!("sd: the job's disk was not saved: {e}"),
        Ok(None) => {}
        Err(e) => eprintln!("sd: cleanup of {id} incomplete: {e} (run `sd cleanup {id}`)"),
    }
    match outcome {
        JobOutcome::Exited(code) => ExitCode::from(code as u8),
        JobOutcome::Killed(signal) => {
            eprintln!(
                "sd: job killed by signal {signal} ({})",
                signal_name(signal)
            );
            ExitCode::from((128 + signal) as u8)
        }
    }
}

fn exec(site: &SiteConfig, name: &str, cwd: &str, command: Vec<String>) -> ExitCode {
    let mut rest = vec!["--".to_string()];
    rest.extend(command.iter().cloned());
    match smartdomains::exec::on_node(site, name, &["exec", "--cwd", cwd], &rest) {
        Ok(Some(step)) => return run_step(step),
        Ok(None) => {}
        Err(e) => return fail(e.exit_code() as u8, &e.to_string()),
    }
    // Blocked before any thread exists, so that every thread inherits it.
    let signals = frontend::block_forwarded_signals();
    match smartdomains::exec::exec(site, name, command, cwd, signals) {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(e) => fail(e.exit_code() as u8, &e.to_string()),
    }
}

/// A job step with our stdio; its exit status as ours (srun's is the task's).
fn run_step(mut step: std::process::Command) -> ExitCode {
    match step.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(EXIT_SITE_FAULT as i32) as u8),
        Err(e) => fail(EXIT_SITE_FAULT, &format!("cannot run srun: {e}")),
    }
}

fn console(site: &SiteConfig, name: &str, follow: bool) -> ExitCode {
    let args: &[&str] = if follow {
        &["console", "--follow"]
    } else {
        &["console"]
    };
    match smartdomains::exec::on_node(site, name, args, &[]) {
        Ok(Some(step)) => return run_step(step),
        Ok(None) => {}
        Err(e) => return fail(e.exit_code() as u8, &e.to_string()),
    }
    match smartdomains::exec::console(site, name, follow, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_code() as u8, &e.to_string()),
    }
}

fn serve(site: SiteConfig, listen: &str, token: bool) -> ExitCode {
    use smartdomains::console;
    if token {
        return match console::token_url(&site, listen, nix::unistd::getuid().as_raw()) {
            Ok(url) => {
                println!("{url}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_REFUSED, &e.to_string()),
        };
    }
    if !nix::unistd::geteuid().is_root() {
        return fail(
            EXIT_REFUSED,
            "sd serve runs as root (it acts for every user of the node); as a user, `sd serve --token` prints your URL",
        );
    }
    match console::serve(site, listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
    }
}

fn set(site: &SiteConfig, name: &str, settings: &[String]) -> ExitCode {
    use sd_site::Blame;
    use smartdomains::settings;
    let refuse = |e: settings::SettingsError| {
        let code = match e.fault() {
            sd_site::Fault::User => EXIT_REFUSED,
            sd_site::Fault::Site => EXIT_SITE_FAULT,
        };
        fail(code, &e.to_string())
    };
    let changes = match settings::parse_assignments(settings) {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    let caller = nix::unistd::getuid().as_raw();
    if !nix::unistd::geteuid().is_root() {
        // The journal and the hypervisor's control socket are root's: a user
        // changes their domains through the console API, which runs as root.
        let target = name.split('/').next().unwrap_or(name);
        let whose = smartdomains::exec::resolve(site, name)
            .and_then(|id| smartdomains::exec::owned(site, &id, caller).map(drop));
        if let Err(e) = whose.or_else(|e| {
            if name.contains('/') {
                Err(e)
            } else {
                smartdomains::exec::owned(site, target, caller).map(drop)
            }
        }) {
            return fail(e.exit_code() as u8, &e.to_string());
        }
        // The journal and the hypervisor's control socket are root's: a
        // user's change is asked of the console service, which runs as root
        // and knows the caller from the kernel (SO_PEERCRED).
        return match smartdomains::console::set_via_socket(site, name, &changes) {
            Ok(applied) => {
                print_applied(&applied);
                ExitCode::SUCCESS
            }
            Err(e @ smartdomains::console::ClientError::NoService { .. }) => fail(
                EXIT_REFUSED,
                &format!(
                    "sd set changes root's files (the journal, the hypervisor's control socket): \
                     as a user it asks the console service, and {e}; or run it as root"
                ),
            ),
            Err(e) => {
                let code = match e.fault() {
                    sd_site::Fault::User => EXIT_REFUSED,
                    sd_site::Fault::Site => EXIT_SITE_FAULT,
                };
                fail(code, &e.to_string())
            }
        };
    }
    match settings::apply(site, name, caller, &changes) {
        Ok(applied) => {
            print_applied(&applied);
            ExitCode::SUCCESS
        }
        Err(e) => refuse(e),
    }
}

fn print_applied(applied: &[smartdomains::settings::Applied]) {
    for a in applied {
        let mut said = vec![];
        if let Some(t) = a.memory_target_mib {
            said.push(match a.memory_actual_mib {
                Some(actual) => format!("memory target {t} MiB, guest has {actual} MiB"),
                None => format!("memory target {t} MiB (the guest does not report)"),
            });
        }
        if let (Some(s), Some(f)) = (a.liveness_secs, a.liveness_factor) {
            said.push(format!("liveness every {s} s, dead after {f} missed"));
        }
        if let Some(save) = a.save {
            said.push(match (save, &a.save_as) {
                (true, Some(n)) => format!("saved as {n} at teardown"),
                (true, None) => "saved at teardown".into(),
                (false, _) => "not saved at teardown".into(),
            });
        }
        println!("{}: {}", a.id, said.join("; "));
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Ctrl-C, SIGTERM, SIGHUP: destroy the domain, clean up, exit 128+N.
/// The signals are blocked in every thread and taken by one thread that
/// waits for them, so no cleanup runs inside a signal handler.
fn guard_signals(site: SiteConfig, id: String) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().expect("block signals");
    std::thread::spawn(move || {
        let signal = set.wait().unwrap_or(Signal::SIGTERM);
        match deployment::interrupt(&site, &id) {
            Ok(_) => eprintln!(
                "sd: {}: domain {id} destroyed and cleaned up",
                signal.as_str()
            ),
            Err(e) => eprintln!(
                "sd: {}: cleanup of {id} failed: {e} (run `sd cleanup {id}`)",
                signal.as_str()
            ),
        }
        std::process::exit(128 + signal as i32);
    });
}

fn cleanup(site: &SiteConfig, id: Option<String>, all: bool) -> ExitCode {
    let ids = match (id, all) {
        (Some(id), _) => vec![id],
        (None, true) => status::list(site).unwrap_or_default(),
        (None, false) => match deployment::orphaned(site) {
            Ok(ids) => ids,
            Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
        },
    };
    let mut code = ExitCode::SUCCESS;
    // What a save killed half-way left in the image store.
    match ImageStore::of_site(site).cleanup_temporaries() {
        Ok(removed) => {
            for path in removed {
                println!("{}: removed (left by an interrupted save)", path.display());
            }
        }
        Err(e) => {
            eprintln!("sd: image store: {e}");
            code = ExitCode::from(EXIT_SITE_FAULT);
        }
    }
    for id in ids {
        match deployment::cleanup(site, &id) {
            Ok(true) => println!("{id}: cleaned up"),
            Ok(false) => println!("{id}: nothing to clean"),
            Err(e) => {
                eprintln!("sd: {id}: {e}");
                code = ExitCode::from(EXIT_SITE_FAULT);
            }
        }
    }
    code
}

fn images(site: &SiteConfig) -> ExitCode {
    println!("catalogue ({}):", site.path.display());
    for (name, image) in &site.images {
        let vos: Vec<&str> = site
            .vos
            .values()
            .filter(|v| v.images.allows(name))
            .map(|v| v.name.as_str())
            .collect();
        println!(
            "  {:<20} {:<40} VOs: {}",
            name,
            image.description.as_deref().unwrap_or("-"),
            vos.join(", ")
        );
    }
    println!("VOs:");
    for vo in site.vos.values() {
        let limit = |v: Option<u64>, unit: &str| v.map_or("-".into(), |v| format!("{v}{unit}"));
        println!(
            "  {:<12} members: {:<36} max memory {}, vCPUs {}, disk {}, store {}",
            vo.name,
            vo.members.to_string(),
            limit(vo.max_memory_mib, " MiB"),
            limit(vo.max_vcpus.map(u64::from), ""),
            limit(vo.max_disk_mib, " MiB"),
            limit(vo.max_store_mib, " MiB"),
        );
    }
    let templates = sd_vmm::template::list(site);
    if templates.is_empty() {
        println!("templates: none");
    } else {
        println!(
            "templates ({}):",
            sd_vmm::template::templates_dir(site).display()
        );
        for t in templates {
            println!(
                "  {:<28} {:<16} {:>6}M {:>2} vCPU  RAM {:>5} MiB, state {:>5} KiB{}",
                t.name,
                t.image,
                t.memory_mib,
                t.vcpus,
                t.ram_bytes >> 20,
                t.state_bytes >> 10,
                if t.complete {
                    ""
                } else {
                    " (incomplete: rebuilt on need)"
                }
            );
        }
    }
    let store = ImageStore::of_site(site);
    match store.list() {
        Ok(saved) if saved.is_empty() => {
            println!("store ({}): no saved images", store.dir().display())
        }
        Ok(saved) => {
            println!("store ({}):", store.dir().display());
            println!(
                "  {:<24} {:<10} {:<22} {:<16} {:>9} {:>9}  {:<20}  FROM JOB",
                "NAME", "VO", "SAVED BY", "BASE", "SIZE", "STORED", "SAVED"
            );
            for m in saved {
                let by = match sd_host::owner::user_name(m.saved_by_uid) {
                    Some(name) => format!("{name} ({})", m.saved_by_uid),
                    None => format!("uid {}", m.saved_by_uid),
                };
                println!(
                    "  {:<24} {:<10} {:<22} {:<16} {:>8}M {:>8}M  {:<20}  {}",
                    m.name,
                    m.vo,
                    by,
                    m.base_image,
                    m.size >> 20,
                    m.compressed_size >> 20,
                    m.created,
                    m.source_job
                );
            }
        }
        Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
    }
    ExitCode::SUCCESS
}

fn remove_image(site: &SiteConfig, name: &str) -> ExitCode {
    if site.images.contains_key(name) {
        return fail(
            EXIT_REFUSED,
            &format!(
                "{name} is a catalogue image: remove it from {}",
                site.path.display()
            ),
        );
    }
    let store = ImageStore::of_site(site);
    let manifest = match store.find(name) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return fail(
                EXIT_REFUSED,
                &format!("no saved image {name:?} in {}", store.dir().display()),
            )
        }
        Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
    };
    let uid = nix::unistd::getuid().as_raw();
    if uid != 0 && uid != manifest.saved_by_uid {
        return fail(
            EXIT_REFUSED,
            &format!(
                "image {name} was saved by uid {}; only that user or root may remove it",
                manifest.saved_by_uid
            ),
        );
    }
    match store.remove(name) {
        Ok(()) => {
            println!("{name}: removed");
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
    }
}

fn start(
    site: &SiteConfig,
    name: &str,
    file: &Path,
    library: &[PathBuf],
    vo: Option<&str>,
) -> ExitCode {
    let description = match sd_languages::description::resolve_file(file, library) {
        Ok(d) => d,
        Err(e) => return fail(EXIT_REFUSED, &e.to_string()),
    };
    let tty = std::io::stderr().is_terminal();
    if tty {
        let n = description.root.domains().len();
        eprintln!(
            "sd: starting pool {name}: {n} domain(s) from {}",
            file.display()
        );
    }
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_SITE_FAULT, &format!("cannot find sd itself: {e}")),
    };
    match pool::start_monitored(site, name, &description, vo, &program) {
        Ok(record) => {
            if tty {
                for m in &record.members {
                    eprintln!("sd: {} up ({}, {} MiB)", m.id, m.image, m.memory_mib);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_user_error() => fail(EXIT_REFUSED, &e.to_string()),
        Err(e) => fail(
            EXIT_SITE_FAULT,
            &format!("pool {name} not started (rolled back): {e}"),
        ),
    }
}

fn terminate(site: &SiteConfig, name: &str) -> ExitCode {
    match pool::terminate(site, name) {
        Ok(Some(record)) => {
            for m in record.members.iter().rev() {
                println!("{}: down", m.id);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("{name}: no such pool, nothing to terminate");
            ExitCode::SUCCESS
        }
        Err(e) if e.is_user_error() => fail(EXIT_REFUSED, &e.to_string()),
        Err(e) => fail(EXIT_SITE_FAULT, &e.to_string()),
    }
}

fn pool_status(site: &SiteConfig, name: &str) -> ExitCode {
    let record = match pool::load(site, name) {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Gone: say how it ended, if this host knows.
            if let Ok(Some(last)) = pool::load_final(site, name) {
                let when = last.members.iter().filter_map(|m| m.down_unix_ms).max();
                println!(
                    "pool {name}: not running; last {} of {} member(s) from {} ended {} — {}",
                    last.kind,
                    last.members.len(),
                    last.source,
                    when.map_or("?".into(), |t| format!(
                        "{}s ago",
                        pool::now_unix_ms().saturating_sub(t) / 1000
                    )),
                    last.terminated_because
                        .as_deref()
                        .unwrap_or("by sd terminate")
                );
            }
            return fail(1, &format!("no pool {name:?} on this host"));
        }
        Err(e) => return fail(EXIT_SITE_FAULT, &e.to_string()),
    };
    let now = pool::now_unix_ms();
    let ago = |t: u64| format!("{:.1}s", now.saturating_sub(t) as f64 / 1000.0);
    println!(
        "pool {name}: {} of {} member(s), from {}, up {}, stopping {}",
        record.kind,
        record.members.len(),
        record.source,
        ago(record.started_unix_ms),
        if record.concurrent_terminate {
            "concurrently"
        } else {
            "in reverse order"
        }
    );
    let liveness = pool::read_liveness(site, name);
    println!("{}", monitor_line(&record, liveness.as_ref()));
    if let Some(why) = &record.terminated_because {
        println!("terminating: {why}");
    }
    if let Some(alloc) = &record.allocation {
        println!(
            "allocation: Slurm job {}, nodes {}",
            alloc.job_id,
            alloc
                .nodes
                .iter()
                .map(|n| format!("{} ({})", n.name, n.addr))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let here = "here".to_string();
    println!(
        "{:<40} {:<8} {:<12} {:<16} {:>8} {:>6} {:>8} {:>10} {:>9} {:>9}",
        "MEMBER",
        "STATE",
        "NODE",
        "IMAGE",
        "MEMORY",
        "VCPUS",
        "UPTIME",
        "LAST BEAT",
        "MISSED",
        "EVERY"
    );
    let states = pool::member_states(site, &record);
    for (m, state) in record.members.iter().zip(states) {
        let uptime = match (state, m.up_unix_ms) {
            (pool::MemberState::Up, Some(up)) => format!("{}s", now.saturating_sub(up) / 1000),
            _ => "-".into(),
        };
        let beat = liveness
            .as_ref()
            .and_then(|l| l.members.iter().find(|b| b.id == m.id));
        let l = m.liveness();
        println!(
            "{:<40} {:<8} {:<12} {:<16} {:>7}M {:>6} {:>8} {:>10} {:>9} {:>8}s",
            m.id,
            format!("{state:?}").to_lowercase(),
            m.node.as_ref().unwrap_or(&here),
            m.image,
            m.memory_mib,
            m.vcpus,
            uptime,
            beat.and_then(|b| b.last_beat_unix_ms)
                .map_or("-".into(), |t| format!("{} ago", ago(t))),
            beat.map_or("-".into(), |b| format!("{}/{}", b.missed, b.factor)),
            l.delay_secs
        );
    }
    ExitCode::SUCCESS
}

/// Whether a pool's monitor runs, and how fresh its view is.
fn monitor_line(record: &pool::PoolRecord, liveness: Option<&pool::LivenessReport>) -> String {
    match record.monitor_pid {
        None => "monitor: none (liveness not watched)".into(),
        Some(pid) if !pool::monitor_alive(pid, &record.name) => {
            format!("monitor: {pid} is GONE: nothing watches this pool (`sd terminate {}` and start it again)", record.name)
        }
        Some(pid) => {
            let missing = liveness
                .map(|l| l.members.iter().filter(|b| b.missed > 0).count())
                .unwrap_or(0);
            let written = liveness.map_or("no report yet".into(), |l| {
                format!(
                    "report {:.1}s old",
                    pool::now_unix_ms().saturating_sub(l.written_unix_ms) as f64 / 1000.0
                )
            });
            format!("monitor: {pid} running, {written}, {missing} member(s) missing beats")
        }
    }
}

fn status(site: &SiteConfig) -> ExitCode {
    let ids = status::list(site).unwrap_or_default();
    if ids.is_empty() {
        println!(
            "no deployments on this host (state directory {})",
            site.state_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<32} {:<8} {:<6} {:<6} {:<16} {:>8} {:>6} {:>8}",
        "ID", "BACKEND", "ACCEL", "START", "IMAGE", "MEMORY", "VCPUS", "UPTIME"
    );
    for id in ids {
        let Ok(Some(f)) = status::of(site, &id) else {
            continue;
        };
        let env = f.environment.as_ref();
        println!(
            "{:<32} {:<8} {:<6} {:<6} {:<16} {:>7}M {:>6} {:>7}s",
            id,
            f.backend.as_deref().unwrap_or("-"),
            f.acceleration.as_deref().unwrap_or("-"),
            f.start.as_deref().unwrap_or("boot"),
            env.map_or("-", |e| e.image.name.as_str()),
            env.map_or(0, |e| e.memory_mib),
            env.map_or(0, |e| e.vcpus),
            f.uptime_secs()
        );
    }
    for name in pool::list(site) {
        let Ok(Some(record)) = pool::load(site, &name) else {
            continue;
        };
        let states = pool::member_states(site, &record);
        let up = states
            .iter()
            .filter(|s| **s == pool::MemberState::Up)
            .count();
        let memory: u64 = record.members.iter().map(|m| m.memory_mib).sum();
        println!(
            "pool {name}: {} {up}/{} up, {memory}M, up {}s; {} (`sd status {name}` for its members)",
            record.kind,
            record.members.len(),
            pool::now_unix_ms().saturating_sub(record.started_unix_ms) / 1000,
            monitor_line(&record, pool::read_liveness(site, &name).as_ref())
        );
    }
    ExitCode::SUCCESS
}
