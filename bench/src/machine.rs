//! The description of the machine a run measured on: CPUs, CPU model, kernel, OS, memory and
//! the load average when the run started (the machine may be shared).

/// Facts about the machine, as `(what, value)` lines for the report.
pub fn describe() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("?")
        .to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "?".into());
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    vec![
        ("CPUs (nproc)".into(), cpus().to_string()),
        ("CPU model".into(), model),
        ("kernel".into(), read("/proc/sys/kernel/osrelease")),
        ("OS".into(), os),
        ("memory".into(), mem),
        ("load average at start (1, 5, 15 min)".into(), {
            let l = read("/proc/loadavg");
            l.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
        }),
    ]
}

/// CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
