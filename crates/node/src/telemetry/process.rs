//! CPU and memory of a process, read from Linux's `/proc`. `/status` reports the node's own
//! (the Prometheus process collector counts CPU in whole seconds only), and `slipstream
//! bench` reads its local nodes' and its own.

/// A process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessUsage {
    /// User and system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Resident memory now (MiB).
    #[serde(rename = "rssMiB")]
    pub rss_mib: f64,
    /// The most resident memory it has had (MiB).
    #[serde(rename = "peakRssMiB")]
    pub peak_rss_mib: f64,
}

/// The usage of process `pid`; `None` where `/proc` is missing or the process is gone.
pub fn usage(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

/// `stat` is `/proc/<pid>/stat`, `status` is `/proc/<pid>/status`.
fn parse(stat: &str, status: &str) -> Option<ProcessUsage> {
    // The command name (in parentheses) may hold spaces; the fields after it are fixed:
    // utime and stime are the 12th and 13th, in clock ticks of 1/100 s (USER_HZ).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let mib = |field: &str| -> Option<f64> {
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some(ProcessUsage {
        cpu_seconds: ticks / 100.0,
        rss_mib: mib("VmRSS")?,
        peak_rss_mib: mib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_read_from_proc_text() {
        let stat = "4242 (slip stream) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 566 0 0 20 0 6 0 100 1000 2000";
        let status = "Name:\tslipstream\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t6\n";
        assert_eq!(
            parse(stat, status),
            Some(ProcessUsage {
                cpu_seconds: 18.0,
                rss_mib: 20.0,
                peak_rss_mib: 40.0
            })
        );
        assert_eq!(parse("garbage", status), None);
        assert_eq!(parse(stat, "Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_in_proc() {
        let u = usage(std::process::id()).expect("/proc is there on Linux");
        assert!(u.rss_mib > 0.0 && u.peak_rss_mib >= u.rss_mib, "{u:?}");
        assert!(u.cpu_seconds.is_finite(), "{u:?}");
    }
}
