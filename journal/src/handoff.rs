//! A one-way queue to a background thread that sleeps without spinning.
//!
//! Owns: handing work from the router's poll loop to a thread of its own
//! (the journal writer here, the events writer in the router) and waking
//! that thread only when it sleeps.
//!
//! Why not a crossbeam channel: its `recv` spins and then calls
//! `sched_yield` four times before it sleeps. On a machine whose cores are
//! all busy running jobs (the case the router exists for), each yield hands
//! the core to a worker and waits for it to come back: per journal commit
//! four extra trips through the scheduler, a worker pre-empted each time
//! (`strace -f` of the router under 1 ms CPU-bound jobs: ~4 `sched_yield`
//! per `fdatasync` in the journal thread and per write in the events
//! thread). Here the receiver takes everything queued in one go under a
//! mutex and, when there is nothing, sleeps on a condition variable at
//! once; a sender signals it only when it is asleep (no wake-up syscall
//! while the thread is busy).
//!
//! Does not own: what is handed over, or back-pressure (the router bounds
//! what it queues itself: its journal batches and events are counted in
//! its byte budgets).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the two ends share.
struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

struct State<T> {
    items: Vec<T>,
    /// The receiver is (about to be) asleep on `wake`.
    sleeping: bool,
    /// The sender is gone: nothing more will come.
    closed: bool,
    /// The receiver is gone: sending is pointless.
    abandoned: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic on the other side while it held the lock leaves the queue
        // itself consistent (a Vec and flags): go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending end (one per queue; not `Clone`).
pub struct HandoffSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end, on the background thread.
pub struct HandoffReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A new queue.
pub fn handoff<T>() -> (HandoffSender<T>, HandoffReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: Vec::new(), sleeping: false, closed: false, abandoned: false }),
        wake: Condvar::new(),
    });
    (HandoffSender { shared: shared.clone() }, HandoffReceiver { shared })
}

impl<T> HandoffSender<T> {
    /// Queues `item`; `Err(item)` when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let mut s = self.shared.lock();
        if s.abandoned {
            return Err(item);
        }
        s.items.push(item);
        if s.sleeping {
            s.sleeping = false;
            drop(s);
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for HandoffSender<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.closed = true;
        drop(s);
        self.shared.wake.notify_one();
    }
}

/// Why [`HandoffReceiver::recv_all_timeout`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// Nothing came within the time given.
    Timeout,
    /// The sender is gone and everything it sent has been taken.
    Closed,
}

impl<T> HandoffReceiver<T> {
    /// Waits for at least one item and moves everything queued into `into`
    /// (appended, in the order sent). `false` once the sender is gone and
    /// nothing is left.
    pub fn recv_all(&self, into: &mut Vec<T>) -> bool {
        self.wait(into, None).is_ok()
    }

    /// As [`Self::recv_all`], waiting at most `limit`.
    pub fn recv_all_timeout(&self, into: &mut Vec<T>, limit: Duration) -> Result<(), Empty> {
        self.wait(into, Some(Instant::now() + limit))
    }

    fn wait(&self, into: &mut Vec<T>, deadline: Option<Instant>) -> Result<(), Empty> {
        let mut s = self.shared.lock();
        loop {
            if !s.items.is_empty() {
                s.sleeping = false;
                if into.is_empty() {
                    // Swap, not copy: the sender gets `into`'s (empty,
                    // already allocated) buffer back.
                    std::mem::swap(into, &mut s.items);
                } else {
                    into.append(&mut s.items);
                }
                return Ok(());
            }
            if s.closed {
                return Err(Empty::Closed);
            }
            s.sleeping = true;
            s = match deadline {
                None => self.shared.wake.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        s.sleeping = false;
                        return Err(Empty::Timeout);
                    }
                    self.shared.wake.wait_timeout(s, d - now).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
    }
}

impl<T> Drop for HandoffReceiver<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.abandoned = true;
        s.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_all_at_once() {
        let (tx, rx) = handoff();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let mut got = Vec::new();
        assert!(rx.recv_all(&mut got));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        tx.send(5).unwrap();
        assert!(rx.recv_all(&mut got));
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5], "appended after what the caller kept");
    }

    #[test]
    fn a_closed_queue_is_drained_before_it_says_closed() {
        let (tx, rx) = handoff();
        tx.send("last").unwrap();
        drop(tx);
        let mut got = Vec::new();
        assert!(rx.recv_all(&mut got));
        assert_eq!(got, vec!["last"]);
        got.clear();
        assert!(!rx.recv_all(&mut got));
        assert_eq!(rx.recv_all_timeout(&mut got, Duration::from_secs(5)), Err(Empty::Closed));
    }

    #[test]
    fn sending_to_a_gone_receiver_gives_the_item_back() {
        let (tx, rx) = handoff();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn an_empty_queue_times_out() {
        let (_tx, rx) = handoff::<u8>();
        let mut got = Vec::new();
        assert_eq!(rx.recv_all_timeout(&mut got, Duration::from_millis(20)), Err(Empty::Timeout));
        assert!(got.is_empty());
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_send_and_by_the_sender_going() {
        let (tx, rx) = handoff::<u64>();
        let t = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut batch = Vec::new();
            while rx.recv_all(&mut batch) {
                all.append(&mut batch);
            }
            all
        });
        for i in 0..10_000u64 {
            tx.send(i).unwrap();
            if i % 1000 == 0 {
                // Let the receiver fall asleep now and then.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(tx);
        let all = t.join().unwrap();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>(), "nothing lost, doubled or reordered");
    }
}
