//! The pool's liveness monitor, `sd pool-monitor NAME`: started detached
//! by `sd start`, it beats every member and terminates the whole pool when
//! one is dead (see the module notes of [`super`]).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use sd_site::SiteConfig;
use sd_vmm::deployment;
use sd_vmm::guest_link::GuestLink;

use super::liveness::{read_liveness_overrides, write_liveness, Beat, LivenessReport};
use super::node_member::StepWatch;
use super::record::{load, monitor_log_path, now_unix_ms, save, MemberRecord, PoolRecord};
use super::stopping::stop;
use super::PoolError;

/// Starts `program --config SITE --verbose pool-monitor NAME` detached: its
/// own session, stdin a pipe, stdout and stderr appended to
/// `LOG_DIR/pool-NAME.log`, working directory `/`. Its pid is recorded
/// before it begins: it waits for its stdin to close, which happens once
/// the record names it, so it never races `sd start` for the record.
pub fn spawn_monitor(
    site: &SiteConfig,
    record: &mut PoolRecord,
    program: &Path,
) -> Result<(), PoolError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let name = record.name.clone();
    let failed = |message: String| PoolError::Monitor {
        name: name.clone(),
        message,
    };
    let log_path = monitor_log_path(site, &name);
    let log = fs::create_dir_all(&site.log_dir)
        .and_then(|()| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
        })
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    let mut cmd = Command::new(program);
    cmd.arg("--config")
        .arg(&site.path)
        .arg("--verbose")
        .arg("pool-monitor")
        .arg(&name)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| failed(e.to_string()))?)
        .stderr(log);
    // Its own session: the terminal's and the batch system's signals for
    // `sd start` are not for it.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", program.display())))?;
    record.monitor_pid = Some(child.id());
    if let Err(e) = save(site, record) {
        let _ = child.kill();
        let _ = child.wait();
        record.monitor_pid = None;
        return Err(e);
    }
    // Go: the record names it.
    drop(child.stdin.take());
    tracing::info!(
        "pool {name}: monitor {} started, log {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// Is `pid` (still) the monitor of pool `name`? A zombie is not.
pub fn monitor_alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"pool-monitor" && w[1] == name.as_bytes())
}

/// Stops the monitor of a pool and waits for it to be gone. A monitor that
/// is terminating the pool itself (a member died) finishes that first.
pub(super) fn stop_monitor(pid: u32, name: &str) {
    use nix::sys::signal::{kill, Signal};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if !monitor_alive(pid, name) {
        return;
    }
    tracing::info!("pool {name}: stopping its monitor {pid}");
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(900);
    while monitor_alive(pid, name) {
        if Instant::now() > deadline {
            tracing::warn!("pool {name}: monitor {pid} does not stop; killing it");
            let _ = kill(target, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) enum Event {
    /// Member `i`'s beat: its round trip, or why it was missed.
    Beat(usize, Result<Duration, String>),
    /// SIGTERM, SIGINT or SIGHUP: `sd terminate` stops the monitor.
    Stop(nix::sys::signal::Signal),
}

/// One beat: a ping through the member's agent, over a link kept open
/// between beats (opened again after any failure).
pub(super) fn beat(
    site: &SiteConfig,
    id: &str,
    link: &mut Option<GuestLink>,
    timeout: Duration,
) -> Result<Duration, String> {
    if link.is_none() {
        *link = Some(deployment::attach(site, id, timeout).map_err(|e| e.to_string())?);
    }
    let result = link.as_ref().expect("just set").ping(timeout);
    result.map_err(|e| {
        // A late answer must not be taken for the next beat's.
        *link = None;
        e.to_string()
    })
}

/// Beats member `i` every `delay_ms` (read before each wait: a live change
/// takes effect at once, counted from the last beat) until `stop`: through
/// its agent here, or, for a member on a node, by what its job step reports.
pub(super) fn beat_member(
    site: &SiteConfig,
    i: usize,
    member: &MemberRecord,
    delay_ms: &AtomicU64,
    stop: &AtomicBool,
    events: &mpsc::Sender<Event>,
) {
    let delay = || Duration::from_millis(delay_ms.load(Ordering::Relaxed));
    let id = member.id.as_str();
    let mut on_node = member.node.as_ref().and_then(|_| StepWatch::new(member));
    let mut link = None;
    // When the last beat was due (None: the first is due at once).
    let mut last: Option<Instant> = None;
    loop {
        let due = loop {
            let due = last.map_or_else(Instant::now, |l| l + delay());
            let now = Instant::now();
            if now >= due {
                break due;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(due - now));
        };
        let timeout = delay().clamp(Duration::from_secs(1), Duration::from_secs(30));
        let result = match &mut on_node {
            Some(step) => step.beat(),
            None => beat(site, id, &mut link, timeout),
        };
        if stop.load(Ordering::Relaxed) || events.send(Event::Beat(i, result)).is_err() {
            return;
        }
        // After a slow beat, the next one is due at once.
        let now = Instant::now();
        last = Some(if now > due + delay() {
            now - delay()
        } else {
            due
        });
    }
}

/// The body of `sd pool-monitor NAME`: waits until `sd start` recorded it
/// (its stdin closes), then beats every member (see the module notes)
/// until `sd terminate` sends SIGTERM, or until a member misses its
/// `sfLivenessFactor` beats: then the pool is terminated (reverse creation
/// order; sync or concurrent), the reason kept in its final record, and the
/// monitor returns.
pub fn run_monitor(site: &SiteConfig, name: &str) -> Result<(), PoolError> {
    let signals = block_stop_signals(name)?;
    // Go once `sd start` closes our stdin: the record names us by then.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let me = std::process::id();
    let record = match load(site, name)? {
        Some(r) if r.monitor_pid == Some(me) => r,
        _ => {
            tracing::info!("pool {name}: not (or no longer) this monitor's pool; exiting");
            return Ok(());
        }
    };
    let (events, incoming) = mpsc::channel();
    forward_signals(signals, events.clone());
    let mut watch = Watch::start(site, &record, events);
    watch.log_start(name);
    match watch.until_a_member_dies(site, name, &incoming)? {
        Some(dead) => watch.terminate_pool(site, name, dead),
        None => Ok(()),
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP, before any thread exists, so that
/// all inherit the mask: the signals are taken by one thread, as events
/// ([`forward_signals`]).
pub(super) fn block_stop_signals(name: &str) -> Result<SigSet, PoolError> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| PoolError::Monitor {
        name: name.into(),
        message: format!("cannot block signals: {e}"),
    })?;
    Ok(signals)
}

/// A thread that turns the first of `signals` into [`Event::Stop`].
pub(super) fn forward_signals(signals: SigSet, events: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let signal = signals.wait().unwrap_or(Signal::SIGTERM);
        let _ = events.send(Event::Stop(signal));
    });
}

/// The members being beaten, their last beats, and the beating threads.
pub(super) struct Watch {
    me: u32,
    /// The members not down when the monitor began, in creation order.
    members: Vec<MemberRecord>,
    /// `beats[i]` is `members[i]`'s.
    beats: Vec<Beat>,
    /// `delays[i]` is `members[i]`'s delay in ms, read by its beating thread.
    delays: Vec<Arc<AtomicU64>>,
    quit: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Watch {
    /// One beating thread per member not down, each sending its beats to
    /// `events`.
    fn start(site: &SiteConfig, record: &PoolRecord, events: mpsc::Sender<Event>) -> Watch {
        let members: Vec<MemberRecord> = record
            .members
            .iter()
            .filter(|m| m.down_unix_ms.is_none())
            .cloned()
            .collect();
        let beats = members
            .iter()
            .map(|m| Beat {
                id: m.id.clone(),
                delay_secs: m.liveness().delay_secs,
                factor: m.liveness().factor,
                last_beat_unix_ms: None,
                last_rtt_us: None,
                missed: 0,
                last_error: None,
            })
            .collect();
        let quit = Arc::new(AtomicBool::new(false));
        let site_shared = Arc::new(site.clone());
        let delays: Vec<Arc<AtomicU64>> = members
            .iter()
            .map(|m| Arc::new(AtomicU64::new(m.liveness().delay_secs * 1000)))
            .collect();
        let threads = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (site, quit, events) = (site_shared.clone(), quit.clone(), events.clone());
                let member = m.clone();
                let delay = delays[i].clone();
                std::thread::spawn(move || beat_member(&site, i, &member, &delay, &quit, &events))
            })
            .collect();
        let mut watch = Watch {
            me: std::process::id(),
            members,
            beats,
            delays,
            quit,
            threads,
        };
        watch.take_live_settings(site, &record.name);
        watch
    }

    /// Takes the live changes of the members' liveness (`sd set ...
    /// liveness=`); true if one changed.
    fn take_live_settings(&mut self, site: &SiteConfig, name: &str) -> bool {
        let overrides = read_liveness_overrides(site, name);
        let mut changed = false;
        for (i, b) in self.beats.iter_mut().enumerate() {
            let Some(l) = overrides.get(&b.id) else {
                continue;
            };
            if (l.delay_secs, l.factor) != (b.delay_secs, b.factor) {
                tracing::info!(
                    "pool {name}: {} now beaten every {} s, dead after {} missed (was {} s, {})",
                    b.id,
                    l.delay_secs,
                    l.factor,
                    b.delay_secs,
                    b.factor
                );
                b.delay_secs = l.delay_secs;
                b.factor = l.factor;
                self.delays[i].store(l.delay_secs * 1000, Ordering::Relaxed);
                changed = true;
            }
        }
        changed
    }

    fn log_start(&self, name: &str) {
        tracing::info!(
            "pool {name}: monitor {} beating {} member(s): {}",
            self.me,
            self.beats.len(),
            self.beats
                .iter()
                .map(|b| format!(
                    "{} every {} s, dead after {} missed",
                    b.id, b.delay_secs, b.factor
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    fn write_report(&self, site: &SiteConfig, name: &str) {
        let report = LivenessReport {
            monitor_pid: self.me,
            written_unix_ms: now_unix_ms(),
            members: self.beats.to_vec(),
        };
        write_liveness(site, name, &report);
    }

    /// The beats until a member misses its `sfLivenessFactor` in a row
    /// (`Some(i)`, its index), or until the monitor is stopped or its pool's
    /// record is gone (`None`). The liveness report is rewritten at most
    /// once a second, at once when a beat is missed or a member answers
    /// again.
    fn until_a_member_dies(
        &mut self,
        site: &SiteConfig,
        name: &str,
        incoming: &mpsc::Receiver<Event>,
    ) -> Result<Option<usize>, PoolError> {
        self.write_report(site, name);
        let mut written = Instant::now();
        let mut settings_read = Instant::now();
        let mut dirty = false;
        loop {
            let mut urgent = false;
            if settings_read.elapsed() >= Duration::from_secs(1) {
                settings_read = Instant::now();
                if self.take_live_settings(site, name) {
                    urgent = true;
                    dirty = true;
                }
            }
            match incoming.recv_timeout(Duration::from_millis(500)) {
                Ok(Event::Stop(signal)) => {
                    tracing::info!(
                        "pool {name}: {}: monitor {} stops",
                        signal.as_str(),
                        self.me
                    );
                    // Let the beats under way finish: an agent whose client
                    // vanished in mid-exchange would answer the next client
                    // (`sd terminate`'s) with what was meant for us.
                    self.stop_beating();
                    return Ok(None);
                }
                Ok(Event::Beat(i, result)) => {
                    urgent |= self.note_beat(name, i, result);
                    dirty = true;
                    let b = &self.beats[i];
                    if b.missed >= b.factor {
                        return Ok(Some(i));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PoolError::Internal {
                        name: name.into(),
                        message: "every beating thread ended".into(),
                    })
                }
            }
            if dirty && (urgent || written.elapsed() >= Duration::from_secs(1)) {
                self.write_report(site, name);
                written = Instant::now();
                dirty = false;
                // Terminated behind our back (an `sd terminate` that did not
                // know about monitors): nothing left to watch.
                match load(site, name) {
                    Ok(Some(r)) if r.monitor_pid == Some(self.me) => {}
                    _ => {
                        tracing::info!(
                            "pool {name}: its record is gone; monitor {} exits",
                            self.me
                        );
                        self.quit.store(true, Ordering::Relaxed);
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes member `i`'s beat into its [`Beat`]; true if the report
    /// should be written at once (a missed beat, or an answer after one).
    fn note_beat(&mut self, name: &str, i: usize, result: Result<Duration, String>) -> bool {
        let b = &mut self.beats[i];
        match result {
            Ok(rtt) => {
                let urgent = b.missed > 0;
                b.missed = 0;
                b.last_beat_unix_ms = Some(now_unix_ms());
                b.last_rtt_us = Some(rtt.as_micros() as u64);
                urgent
            }
            Err(e) => {
                b.missed += 1;
                tracing::warn!(
                    "pool {name}: {} missed beat {} of {}: {e}",
                    b.id,
                    b.missed,
                    b.factor
                );
                b.last_error = Some(e);
                true
            }
        }
    }

    /// Ends the beating threads, once their beats under way are done.
    fn stop_beating(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Member `dead` is dead: the pool is terminated (reverse creation
    /// order), the reason kept in its record.
    fn terminate_pool(
        mut self,
        site: &SiteConfig,
        name: &str,
        dead: usize,
    ) -> Result<(), PoolError> {
        self.write_report(site, name);
        let b = &self.beats[dead];
        let path = self.members[dead].path.clone();
        let reason = format!(
            "member {} ({path}) is dead: it missed {} beats in a row (sfLivenessDelay {} s, sfLivenessFactor {}); last: {}",
            b.id,
            b.missed,
            b.delay_secs,
            b.factor,
            b.last_error.as_deref().unwrap_or("?")
        );
        tracing::error!(
            "pool {name}: {reason}; terminating every member in reverse creation order"
        );
        // Free the agents' links (one client at a time) for the graceful stops.
        self.stop_beating();
        let Some(mut record) = load(site, name)? else {
            return Ok(());
        };
        record.terminated_because = Some(reason);
        record.terminated_unix_ms = Some(now_unix_ms());
        save(site, &record)?;
        let started = Instant::now();
        let record = stop(site, record, true, false)?;
        tracing::info!(
            "pool {name}: terminated in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            record
                .members
                .iter()
                .rev()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }
}
