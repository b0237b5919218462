//! Per-queue state: which job managers serve the queue (with their weight
//! for it) and the jobs waiting for a free slot, oldest first.

use super::WaitingJob;
use emq_receiver::PeerId;
use std::collections::VecDeque;

/// One named queue.
#[derive(Debug, Default)]
pub struct QueueState {
    /// `(weight, job manager)` for every job manager listing this queue.
    pub job_managers: Vec<(u32, PeerId)>,
    /// Jobs with no free slot yet, oldest first (bounded by `hwm`).
    pub waiting: VecDeque<WaitingJob>,
    /// True once any job manager has served it: from then on REQUESTs for
    /// it wait here instead of falling back to `default`.
    pub ever_served: bool,
    /// Paused by an operator: jobs are still accepted and kept, none is
    /// handed out until it is resumed.
    pub paused: bool,
    /// The job managers with a free slot for this queue, in the order they
    /// get the next job: highest weight first, then the one that waited
    /// longest here (its key's sequence number). Picking is `O(log n)`
    /// however many job managers serve the queue.
    pub free: std::collections::BTreeSet<(std::cmp::Reverse<u32>, u64, PeerId)>,
}
