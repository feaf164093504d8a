//! The dev cluster's children: started in process groups of their own (so the terminal's
//! Ctrl-C reaches only `dllm dev`, which stops them in order), reported when one exits (which,
//! how, where its log is) while the rest go on, restarted on request, and stopped workers
//! first (so they can leave while the replicas still answer), then replicas.

use std::{
    ffi::OsString,
    fmt::Write as _,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use nix::{sys::signal, unistd::Pid};

/// How long a stop waits for a group to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a child is, which decides when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A control-plane replica: stopped last.
    Replica,
    /// A worker: stopped first, while it can still leave.
    Worker,
}

struct Child {
    name: String,
    kind: Kind,
    program: OsString,
    args: Vec<OsString>,
    log: PathBuf,
    process: Option<std::process::Child>,
}

impl Child {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            // Plain text in the log files.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // If `dllm dev` itself dies without stopping them (SIGKILL), its children follow
        // (they are in their own process groups, so no terminal signal reaches them).
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
        // exec.
        let parent = nix::unistd::getpid();
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)?;
                // A parent that died before the line above would never be noticed.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("dllm dev exited"));
                }
                Ok(())
            });
        }
        let process = command
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.process = Some(process);
        Ok(())
    }

    fn pid(&self) -> Option<Pid> {
        self.process.as_ref().map(|p| Pid::from_raw(p.id() as i32))
    }
}

/// The children of a dev cluster.
#[derive(Default)]
pub struct Children(Vec<Child>);

impl Children {
    /// Starts `command` (whose program and arguments are kept, for restarts) as `name`,
    /// its output appended to `log`.
    ///
    /// # Errors
    /// When the log cannot be opened or the program not started.
    pub fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        command: &Command,
        log: &Path,
    ) -> anyhow::Result<()> {
        let mut child = Child {
            name: name.to_string(),
            kind,
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            log: log.to_path_buf(),
            process: None,
        };
        child.start()?;
        self.0.push(child);
        Ok(())
    }

    /// A line for each child that has exited since the last call: which, how, its log, and
    /// how to start it again. The others go on.
    pub fn exits(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for child in &mut self.0 {
            let Some(process) = &mut child.process else {
                continue;
            };
            if let Ok(Some(status)) = process.try_wait() {
                child.process = None;
                lines.push(format!(
                    "{} exited ({status}); its log is {}. Type `restart {}` and Enter to start it again.",
                    child.name,
                    child.log.display(),
                    child.name
                ));
            }
        }
        lines
    }

    /// Answers one line typed on `dllm dev`'s standard input.
    pub fn command(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => String::new(),
            ["restart", name] => match self.restart(name) {
                Ok(said) | Err(said) => said,
            },
            ["status"] | ["ps"] => self.status(),
            _ => format!(
                "commands: `restart <name>` (one of {}), `status`; Ctrl-C stops the cluster",
                self.names()
            ),
        }
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts `name` again: stopped first if it is running.
    fn restart(&mut self, name: &str) -> Result<String, String> {
        let names = self.names();
        let child = self
            .0
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no child named {name:?}; the children are {names}"))?;
        if child.process.is_some() {
            stop(std::slice::from_mut(child));
        }
        child.start().map_err(|e| format!("{e:#}"))?;
        let pid = child.pid().map_or(0, Pid::as_raw);
        Ok(format!(
            "{name} started again (pid {pid}); its log is {}",
            child.log.display()
        ))
    }

    fn status(&mut self) -> String {
        let mut out = String::new();
        for child in &mut self.0 {
            let state = match &mut child.process {
                Some(p) => format!("running, pid {}", p.id()),
                None => "exited".to_string(),
            };
            let _ = writeln!(out, "  {:<10} {state}", child.name);
        }
        out.trim_end().to_string()
    }

    /// Stops the workers (SIGTERM: they leave the cluster), then the replicas; each group is
    /// waited for up to [`STOP_GRACE`], then killed.
    pub fn stop(&mut self) {
        for kind in [Kind::Worker, Kind::Replica] {
            let mut group: Vec<&mut Child> = self.0.iter_mut().filter(|c| c.kind == kind).collect();
            stop_all(&mut group);
        }
    }
}

fn stop(children: &mut [Child]) {
    let mut refs: Vec<&mut Child> = children.iter_mut().collect();
    stop_all(&mut refs);
}

fn stop_all(children: &mut [&mut Child]) {
    for child in children.iter() {
        // The child leads its own process group: anything it started goes too.
        if let Some(pid) = child.pid() {
            let _ = signal::killpg(pid, signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for child in children.iter_mut() {
        let Some(process) = &mut child.process else {
            continue;
        };
        while process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = process.kill();
        let _ = process.wait();
        child.process = None;
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}
