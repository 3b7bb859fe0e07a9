//! Where the benchmark's threads spent a scenario, from the kernel's scheduler statistics
//! (`/proc/self/task/*/schedstat`: the time each thread ran on a core, and the time it was
//! runnable but waited for one): whether a slow admission was the operator working, or the
//! operator waiting for a core that the benchmark's client or another process held.

use std::time::Duration;

/// Time on a core and time runnable without one, summed over a set of threads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scheduled {
    /// On a core.
    pub ran: Duration,
    /// Runnable, waiting for a core (the run queue).
    pub waited: Duration,
    /// Threads counted.
    pub threads: usize,
}

impl Scheduled {
    /// What happened between `before` and this (threads that ended meanwhile are not counted).
    pub fn since(&self, before: &Scheduled) -> Scheduled {
        Scheduled {
            ran: self.ran.saturating_sub(before.ran),
            waited: self.waited.saturating_sub(before.waited),
            threads: self.threads,
        }
    }
}

impl std::fmt::Display for Scheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ran {:.1} ms, waited for a core {:.1} ms ({} threads)",
            self.ran.as_secs_f64() * 1000.0,
            self.waited.as_secs_f64() * 1000.0,
            self.threads
        )
    }
}

/// This process's threads so far: those named `name` (the server's runtime names its threads),
/// and all the others (the client's); `None` where the kernel does not keep the statistics.
pub fn so_far(name: &str) -> Option<(Scheduled, Scheduled)> {
    let (mut named, mut others) = (Scheduled::default(), Scheduled::default());
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        // A thread that ended while being read is simply not counted.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        // "<ns on a core> <ns waiting on the run queue> <timeslices>"
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(ran)), Some(Some(waited))) = (fields.next(), fields.next()) else {
            continue;
        };
        let sum = if comm.trim_end() == name {
            &mut named
        } else {
            &mut others
        };
        sum.ran += Duration::from_nanos(ran);
        sum.waited += Duration::from_nanos(waited);
        sum.threads += 1;
    }
    Some((named, others))
}
