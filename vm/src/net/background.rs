//! A frame source read ahead by a thread of its own, so that its sender never waits for the
//! reader: a pruned program's dealer streams what it made ahead while the server is still
//! waiting for its client, and the server finds it in memory when the run needs it.

use super::{FrameSource, TransportError};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// Frames read ahead from another source, at most `cap` bytes held at once.
pub struct Background {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    /// Bytes of the underlying source up to the last frame taken.
    bytes: u64,
}

struct Queue {
    /// Each frame (or the error that ended the stream) with the source's byte count after it.
    frames: VecDeque<(Result<Vec<u8>, TransportError>, u64)>,
    held: u64,
    cap: u64,
    /// The reader side was dropped: the thread stops at its next frame.
    gone: bool,
}

impl Background {
    /// Starts reading `src` ahead until an error or the end-of-stream frame (empty); the
    /// reader waits while `cap` bytes are held (a correct sender never sends more than the
    /// program's material), and refuses a frame of more than `max_frame` bytes (more than
    /// any one instruction's material) at its header.
    pub fn new(mut src: Box<dyn FrameSource>, cap: u64, max_frame: u64) -> Background {
        let q = Queue { frames: VecDeque::new(), held: 0, cap, gone: false };
        let shared = Arc::new((Mutex::new(q), Condvar::new()));
        let theirs = shared.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*theirs;
            loop {
                {
                    let mut q = lock.lock().expect("queue");
                    while q.held >= q.cap && !q.gone {
                        q = cv.wait(q).expect("queue");
                    }
                    if q.gone {
                        return;
                    }
                }
                let r = src.recv_at_most(max_frame);
                let end = r.as_ref().map_or(true, |f| f.is_empty());
                let mut q = lock.lock().expect("queue");
                q.held += r.as_ref().map_or(0, |f| f.len() as u64);
                q.frames.push_back((r, src.bytes()));
                cv.notify_all();
                if end {
                    return;
                }
            }
        });
        Background { shared, bytes: 0 }
    }
}

impl FrameSource for Background {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        let (lock, cv) = &*self.shared;
        let mut q = lock.lock().expect("queue");
        loop {
            if let Some((r, bytes)) = q.frames.pop_front() {
                self.bytes = bytes;
                match r {
                    Ok(f) => {
                        q.held -= f.len() as u64;
                        let end = f.is_empty();
                        cv.notify_all();
                        if end {
                            // The end stays the end for any later read.
                            q.frames.push_front((Ok(Vec::new()), bytes));
                        }
                        return Ok(f);
                    }
                    Err(e) => {
                        let again = TransportError::Closed {
                            peer: "dealer".into(),
                            during: format!(" (after: {e})"),
                        };
                        q.frames.push_front((Err(again), bytes));
                        return Err(e);
                    }
                }
            }
            q = cv.wait(q).expect("queue");
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().expect("queue").gone = true;
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::local::dealer_channel;
    use crate::net::FrameSink;

    #[test]
    fn frames_come_in_order_and_the_sender_never_waits_below_the_cap() {
        let (mut sink, source) = dealer_channel();
        let mut bg = Background::new(Box::new(source), 1 << 20, 1000);
        for k in 0..100u8 {
            sink.send_frame(vec![k; 1000]).unwrap();
        }
        sink.send_frame(Vec::new()).unwrap();
        for k in 0..100u8 {
            assert_eq!(bg.recv_frame().unwrap(), vec![k; 1000]);
        }
        assert!(bg.recv_frame().unwrap().is_empty());
        assert!(bg.recv_frame().unwrap().is_empty());
        assert!(bg.recv_exact(8).is_err());
    }

    #[test]
    fn a_closed_source_is_an_error_for_the_reader() {
        let (mut sink, source) = dealer_channel();
        let mut bg = Background::new(Box::new(source), 100, 10);
        sink.send_frame(vec![1; 10]).unwrap();
        drop(sink);
        assert_eq!(bg.recv_frame().unwrap(), vec![1; 10]);
        assert!(bg.recv_frame().is_err());
        assert!(bg.recv_frame().is_err());
    }

    #[test]
    fn a_frame_larger_than_any_instructions_material_is_refused() {
        for (max, refused) in [(999, true), (1000, false)] {
            let (mut sink, source) = dealer_channel();
            let mut bg = Background::new(Box::new(source), 1 << 20, max);
            sink.send_frame(vec![7; 1000]).unwrap();
            sink.send_frame(Vec::new()).unwrap();
            assert_eq!(bg.recv_frame().is_err(), refused, "at most {max}");
        }
    }
}
