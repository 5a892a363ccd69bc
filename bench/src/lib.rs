//! porcupine's benchmarks and experiments (see `bench/README.md`); each binary in `src/bin`
//! measures one thing against a baseline taken in the same run and reports the ratio.

pub mod cluster;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Servers to stop at the end, whatever happens.
#[derive(Debug, Default)]
pub struct Servers {
    pub children: Vec<(String, Child)>,
    pub pids: Vec<(String, u32)>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("stopped {name} (pid {})", child.id());
        }
        for (name, pid) in &self.pids {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            eprintln!("stopped {name} (pid {pid})");
        }
    }
}
