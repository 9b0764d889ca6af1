//! What the server harnesses (redis.rs, postgres.rs) share: ephemeral ports
//! and reading a child's output without blocking it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// A port that was free on 127.0.0.1 a moment ago. The listener is dropped
/// before the server binds, so another process may take the port in between;
/// the harnesses retry with a new one when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Reads `output` until it closes, keeping the last `keep` lines in `tail`
/// and forwarding each line to the first receiver until it drops. The second
/// receiver disconnects when the output has closed (every process holding it
/// has exited).
pub fn drain_output(
    output: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
) -> (mpsc::Receiver<String>, mpsc::Receiver<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let _closed = closed_tx;
        let mut tx = Some(tx);
        let mut output = BufReader::new(output);
        let mut buf = Vec::new();
        // Bytes, not `lines()`: a line that is not UTF-8 must not end the
        // reading, or the server would look gone.
        while matches!(output.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches('\n')
                .to_string();
            buf.clear();
            if tx.as_ref().is_some_and(|s| s.send(line.clone()).is_err()) {
                tx = None;
            }
            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            if tail.len() == keep {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
    (rx, closed_rx, handle)
}
