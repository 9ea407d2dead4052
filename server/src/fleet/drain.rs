//! Why a worker leaves its slice.

/// Why a worker is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// Made room for another model (least recently used).
    Evicted,
    /// Nobody asked for its model within `idle_unload_secs`.
    Idle,
    /// `POST /models/unload`.
    Unload,
    /// A reload removed or changed its model.
    Reload,
}

impl DrainReason {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::Evicted => "evicted",
            DrainReason::Idle => "idle",
            DrainReason::Unload => "unload",
            DrainReason::Reload => "reload",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [DrainReason; 4] = [
        DrainReason::Evicted,
        DrainReason::Idle,
        DrainReason::Unload,
        DrainReason::Reload,
    ];
}
