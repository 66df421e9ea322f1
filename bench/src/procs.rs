//! Child processes of the harness: spawning them pinned to a CPU (with `taskset` when it
//! exists), waiting for their ports, stopping them (SIGTERM, then SIGKILL) when dropped, and
//! reading their CPU time and resident memory from `/proc`.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Which CPUs the harness pins to; `None` when `taskset` is missing (nothing is pinned).
#[derive(Debug, Clone)]
pub struct Pinning {
    /// CPU list for the proxy under test (`taskset -c`).
    pub proxy: String,
    /// CPU list for the load generator and the backends.
    pub load: String,
}

impl Pinning {
    /// Pins proxy to CPU 0 and the rest to CPU 1 when `taskset` exists and there are at least
    /// two CPUs; otherwise `None`.
    pub fn detect(cpus: usize) -> Option<Pinning> {
        if cpus < 2 || !crate::setup::have("taskset") {
            return None;
        }
        Some(Pinning {
            proxy: "0".into(),
            load: "1".into(),
        })
    }

    /// A description for the report.
    pub fn describe(p: &Option<Pinning>) -> String {
        match p {
            Some(p) => format!(
                "taskset: proxy on CPU {}; load generator, WebSocket client (this harness) and \
                 backends on CPU {}",
                p.proxy, p.load
            ),
            None => {
                "none (taskset missing or fewer than 2 CPUs): everything shares all CPUs".into()
            }
        }
    }
}

/// A command, optionally prefixed with `taskset -c CPUS`.
pub fn pinned(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Pins this process (and the threads it creates afterwards) to `cpus`.
pub fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset on the harness itself")?;
    if !status.success() {
        bail!("taskset -p -c {cpus} on the harness failed: {status}");
    }
    Ok(())
}

/// A running child process, stopped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("{} exited ({status}); last log lines:\n{tail}", self.name);
        }
        Ok(())
    }

    /// The process and its direct children (nginx's master and workers).
    pub fn tree(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        pids.extend(children(pid));
        pids
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `addr` accepts TCP connections, checking `proc` is alive meanwhile.
pub fn wait_port(proc: &mut Proc, log: &Path, addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.check_alive(log)?;
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within {within:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails if something already listens on `addr`.
pub fn ensure_free(addr: SocketAddr) -> Result<()> {
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        bail!("something already listens on {addr}; stop it or pick other ports (--port-base)");
    }
    Ok(())
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p).is_some_and(|f| f.get(1).map(String::as_str) == Some(&*pid.to_string()))
        })
        .collect()
}

/// The fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of `pids`, in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tck = clock_ticks();
    pids.iter()
        .filter_map(|&p| {
            let f = stat_fields(p)?;
            // Fields 14 and 15 of stat(5); `f` starts at field 3.
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / tck)
        })
        .sum()
}

/// VmRSS of `pids` added up, in KiB (shared pages of nginx's processes count once each).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant; no memory is involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Per-CPU (busy, total) jiffies from /proc/stat; busy is all but idle and iowait.
pub fn cpu_jiffies() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy % per CPU between two [`cpu_jiffies`] readings.
pub fn busy_pct(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(&(b0, t0), &(b1, t1))| {
            let t = t1.saturating_sub(t0);
            if t == 0 {
                0.0
            } else {
                b1.saturating_sub(b0) as f64 / t as f64 * 100.0
            }
        })
        .collect()
}

/// Waits (at most `max`) until every CPU is under 15% busy over half a second, so a round
/// does not start while another tenant of the machine computes. Returns whether it was quiet.
pub fn wait_quiet(max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        let a = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(500));
        let busy = busy_pct(&a, &cpu_jiffies());
        if busy.iter().all(|&b| b < 15.0) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it), for the
/// idle-tunnel count. Returns the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
