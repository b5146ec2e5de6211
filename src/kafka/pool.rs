//! The worker threads that apply partitions (`kafka.threads`, Kafka Streams'
//! stream threads): a fixed pool fed one job — one partition — at a time from one
//! queue. A worker that finishes takes whichever job waits next, so no worker idles
//! while another works through a long list of its own (fixed shares, dealt per
//! round, had left one of two vCPUs idle for seconds at a time at the end of a
//! catch-up).
//!
//! A job that panics takes its worker down with it and the panic is raised again
//! on the thread that collects the results, as joining a thread would.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

pub struct Pool<J, R> {
    shared: Arc<Shared<J>>,
    results: mpsc::Receiver<std::thread::Result<R>>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs handed in whose results were not collected yet.
    outstanding: usize,
}

struct Shared<J> {
    queue: Mutex<Queue<J>>,
    wake: Condvar,
    /// Results sent (or about to be) and not collected yet.
    finished: AtomicUsize,
}

struct Queue<J> {
    jobs: VecDeque<J>,
    closed: bool,
}

impl<J> Shared<J> {
    /// The next job, waiting for one; `None` once the pool is closed.
    fn next(&self) -> Option<J> {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.wake.wait(q).unwrap();
        }
    }
}

impl<J: Send + 'static, R: Send + 'static> Pool<J, R> {
    /// Start `threads` workers (at least one) that run `work` on each job.
    pub fn new(
        name: &str,
        threads: usize,
        work: impl Fn(J) -> R + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            finished: AtomicUsize::new(0),
        });
        let (tx, results) = mpsc::channel();
        let work = Arc::new(work);
        let threads = (0..threads.max(1))
            .map(|_| {
                let (shared, tx, work) = (shared.clone(), tx.clone(), work.clone());
                std::thread::Builder::new()
                    .name(name.to_string())
                    .spawn(move || {
                        while let Some(job) = shared.next() {
                            let r = std::panic::catch_unwind(AssertUnwindSafe(|| work(job)));
                            let panicked = r.is_err();
                            // Counted before it is sent: the count is never below
                            // what the channel holds.
                            shared.finished.fetch_add(1, Ordering::AcqRel);
                            if tx.send(r).is_err() || panicked {
                                break;
                            }
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool {
            shared,
            results,
            threads,
            outstanding: 0,
        })
    }

    /// Hand a job to the workers (they take jobs in the order submitted).
    pub fn submit(&mut self, job: J) {
        self.shared.queue.lock().unwrap().jobs.push_back(job);
        self.shared.wake.notify_one();
        self.outstanding += 1;
    }

    /// Jobs submitted whose results were not collected yet (waiting for a worker,
    /// being worked on, or done).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// A worker finished a job whose result was not collected yet (cheap: for a
    /// wait elsewhere to end early on).
    pub fn any_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire) > 0
    }

    /// The results ready now; with `wait`, every outstanding one (waiting for them).
    pub fn collect(&mut self, wait: bool) -> Vec<R> {
        let mut out = Vec::new();
        while self.outstanding > 0 {
            let r = if wait {
                self.results.recv().ok()
            } else {
                self.results.try_recv().ok()
            };
            let Some(r) = r else { break };
            self.outstanding -= 1;
            self.shared.finished.fetch_sub(1, Ordering::AcqRel);
            out.push(r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        out
    }

    /// Wait for the next result (`None` when nothing is outstanding), and take
    /// the others that are ready too.
    pub fn collect_one(&mut self) -> Vec<R> {
        if self.outstanding == 0 {
            return Vec::new();
        }
        let first = self.results.recv().ok();
        let mut out: Vec<R> = first
            .into_iter()
            .map(|r| {
                self.outstanding -= 1;
                self.shared.finished.fetch_sub(1, Ordering::AcqRel);
                r.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        out.extend(self.collect(false));
        out
    }
}

impl<J, R> Drop for Pool<J, R> {
    /// Workers finish the job in hand; jobs still queued are dropped.
    fn drop(&mut self) {
        {
            let mut q = self.shared.queue.lock().unwrap();
            q.closed = true;
            q.jobs.clear();
        }
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            t.join().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    /// A long job does not hold up the others: the second worker takes every
    /// other job while the first is busy.
    #[test]
    fn a_free_worker_takes_the_next_job() {
        let release = Arc::new(Barrier::new(2));
        let busy = release.clone();
        let mut pool = Pool::new("test", 2, move |job: u32| {
            if job == 0 {
                busy.wait(); // held until every other job is done
            }
            job
        })
        .unwrap();
        for job in 0..10 {
            pool.submit(job);
        }
        let mut done = Vec::new();
        while done.len() < 9 {
            done.extend(pool.collect_one());
        }
        done.sort();
        assert_eq!(done, (1..10).collect::<Vec<_>>());
        assert_eq!(pool.outstanding(), 1);
        release.wait();
        assert_eq!(pool.collect(true), vec![0]);
        assert_eq!(pool.outstanding(), 0);
        assert!(pool.collect(true).is_empty());
    }

    /// `any_finished` tells a finished job from a running one, and is false again
    /// once its result is collected.
    #[test]
    fn a_finished_job_is_seen_before_it_is_collected() {
        let release = Arc::new(Barrier::new(2));
        let held = release.clone();
        let mut pool = Pool::new("test", 1, move |job: u32| {
            held.wait();
            job
        })
        .unwrap();
        assert!(!pool.any_finished());
        pool.submit(7);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!pool.any_finished(), "still running");
        release.wait();
        while !pool.any_finished() {
            std::thread::yield_now();
        }
        assert_eq!(pool.outstanding(), 1, "finished, not collected");
        // (Counted just before it is sent: wait for it rather than try.)
        assert_eq!(pool.collect_one(), vec![7]);
        assert!(!pool.any_finished());
        pool.submit(8);
        release.wait();
        assert_eq!(pool.collect_one(), vec![8]);
        assert!(!pool.any_finished());
    }

    /// A job's panic reaches the collector; the pool shuts down cleanly after.
    #[test]
    fn a_panic_is_raised_where_results_are_collected() {
        let ran = Arc::new(AtomicUsize::new(0));
        let count = ran.clone();
        let mut pool = Pool::new("test", 1, move |job: u32| {
            count.fetch_add(1, Ordering::SeqCst);
            assert!(job != 1, "job 1 fails");
            job
        })
        .unwrap();
        pool.submit(1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.collect(true)));
        assert!(caught.is_err());
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(pool);
    }
}
