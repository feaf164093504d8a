//! The wall clock. The control plane stamps commands with it (the proposing replica decides
//! the time, and the command carries it) and the worker stamps its usage samples.

/// Unix milliseconds now; 0 on a clock set before 1970.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
