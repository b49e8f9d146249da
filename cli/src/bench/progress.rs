//! Progress on stderr while the bench runs: where it is, how long it has taken and about how long is
//! left, and the failures worth keeping on screen. stdout stays for the results.

use std::io::IsTerminal as _;
use std::time::Instant;

/// A progress line on stderr: rewritten in place on a terminal, one line per step otherwise (CI logs).
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    tty: bool,
    /// Whether the terminal line currently shows something that must be cleared first.
    dirty: bool,
    printed: Vec<String>,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            dirty: false,
            printed: Vec::new(),
        }
    }

    /// A measurement starts.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs();
        let eta = if self.done > 1 {
            let per = self.started.elapsed().as_secs_f64() / (self.done - 1) as f64;
            format!(
                ", about {}s left",
                (per * (self.total + 1 - self.done) as f64).round()
            )
        } else {
            String::new()
        };
        let line = format!(
            "[{:>3}/{}] {:>3}% {elapsed}s{eta}  {what}",
            self.done,
            self.total,
            100 * (self.done - 1) / self.total.max(1)
        );
        self.show(&line);
    }

    /// Something between measurements (starting pairs, generating keys).
    pub fn status(&mut self, what: &str) {
        if self.tty {
            let line = format!(
                "[{:>3}/{}] {}s  {what}",
                self.done,
                self.total,
                self.started.elapsed().as_secs()
            );
            self.show(&line);
        }
    }

    fn show(&mut self, line: &str) {
        if self.tty {
            let width = 119;
            let cut: String = line.chars().take(width).collect();
            eprint!("\r\x1b[2K{cut}");
            self.dirty = true;
        } else {
            eprintln!("{line}");
        }
    }

    /// [`Progress::println`], unless the same message was printed before.
    pub fn println_once(&mut self, msg: &str) {
        if !self.printed.iter().any(|m| m == msg) {
            self.printed.push(msg.to_owned());
            self.println(msg);
        }
    }

    /// A message that must stay (a failure).
    pub fn println(&mut self, msg: &str) {
        if self.dirty {
            eprint!("\r\x1b[2K");
            self.dirty = false;
        }
        eprintln!("{msg}");
    }

    pub fn finish(&mut self) {
        if self.dirty {
            eprint!("\r\x1b[2K");
            self.dirty = false;
        }
        eprintln!(
            "measured {} runs in {:.1}s",
            self.done,
            self.started.elapsed().as_secs_f64()
        );
    }
}
