//! What the CLI needs natively: the lock file path of a name, and a spawn that ties the command
//! to the lock.
//!
//! Node's `child_process` cannot run code between `fork` and `exec`, and that is where a command
//! is tied to the lock:
//! - a file lock's descriptor is duplicated without `FD_CLOEXEC`, so the command inherits the
//!   open file that holds the `flock` and keeps the lock as long as it runs, even when distlock
//!   is killed with `kill -9` (what `flock(1)` does);
//! - for a network lock, on Linux, `PR_SET_PDEATHSIG` with `SIGKILL`: the command is killed when
//!   distlock dies, since its lock dies with distlock's session. The signal follows the thread
//!   that forked, so the fork runs on the JS main thread, which lives as long as the process.
//!   A distlock that died before the `prctl` took effect is caught by comparing `getppid()` with
//!   the parent's pid: the command is then never executed.
//!
//! The exit status is read by a thread of its own with `waitid(WNOWAIT)` first, so a signal
//! forwarded by [`NativeChild::kill`] never reaches a recycled pid: the pid is reaped only
//! under the same lock that `kill` takes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::oneshot;

use crate::errors::{Failure, promise, to_js};
use crate::handle::NativeHandle;

/// The path of the lock file of `name` in `directory`, from the file backend's name mapping.
#[napi]
pub fn file_lock_path(env: Env, directory: String, name: String) -> Result<String> {
    let path =
        distlock_file::lock_file_path(Path::new(&directory), &name).map_err(|e| to_js(&env, e))?;
    Ok(path.to_string_lossy().into_owned())
}

/// What to run.
#[napi(object)]
pub struct SpawnOptions {
    /// The program (searched in the `PATH` of `env` when it has no slash).
    pub file: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: HashMap<String, String>,
    /// Kill the command (`SIGKILL`) when this process dies; Linux only, ignored elsewhere.
    pub die_with_parent: bool,
}

/// Why a command could not be started.
#[napi(object)]
pub struct SpawnFailure {
    /// `ENOENT` (no such program), `EACCES` (not executable) or `EIO` (anything else).
    pub code: String,
    /// The OS's words.
    pub message: String,
}

/// How a command ended: its exit code, or the signal that killed it.
#[napi(object)]
pub struct ExitInfo {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
}

/// A running command.
#[napi]
pub struct NativeChild {
    pid: i32,
    /// True once the pid is reaped (and may belong to another process).
    reaped: Arc<Mutex<bool>>,
    exit: Mutex<Option<oneshot::Receiver<io::Result<ExitInfo>>>>,
}

/// Starts `options.file` with the terminal's stdio. With `handle` (a file lock), the command
/// inherits a descriptor that holds the lock.
#[napi]
pub fn spawn_command(
    env: Env,
    options: SpawnOptions,
    handle: Option<&NativeHandle>,
) -> Result<Either<NativeChild, SpawnFailure>> {
    let inherited: Option<OwnedFd> = match handle.and_then(|h| h.current()) {
        Some(held) => held
            .duplicate_descriptor()
            .transpose()
            .map_err(|e| Failure::os(format!("dup: {e}")).into_js(&env))?,
        None => None,
    };
    let mut command = Command::new(&options.file);
    command.args(&options.args).env_clear().envs(&options.env);
    let fd = inherited.as_ref().map(AsRawFd::as_raw_fd);
    let parent = std::process::id();
    let die_with_parent = options.die_with_parent;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (fcntl, prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Node opens its stdio close-on-exec, and pipes non-blocking: the command gets them
            // (where open) inherited and blocking, as Node's own spawn gives them.
            for std_fd in 0..=2 {
                let flags = libc::fcntl(std_fd, libc::F_GETFD);
                if flags != -1 && flags & libc::FD_CLOEXEC != 0 {
                    libc::fcntl(std_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
                let status = libc::fcntl(std_fd, libc::F_GETFL);
                if status != -1 && status & libc::O_NONBLOCK != 0 {
                    libc::fcntl(std_fd, libc::F_SETFL, status & !libc::O_NONBLOCK);
                }
            }
            if let Some(fd) = fd
                && libc::fcntl(fd, libc::F_SETFD, 0) == -1
            {
                return Err(io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // distlock died before the prctl: its lock is gone, so never exec.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (die_with_parent, parent);
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => "ENOENT",
                io::ErrorKind::PermissionDenied => "EACCES",
                _ => "EIO",
            };
            return Ok(Either::B(SpawnFailure {
                code: code.into(),
                message: e.to_string(),
            }));
        }
    };
    // The command has its copy; ours closes now.
    drop(inherited);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // Dropping a `Child` neither waits nor kills; the thread below reaps the pid.
    drop(child);
    let reaped = Arc::new(Mutex::new(false));
    let (tx, rx) = oneshot::channel();
    let waiting = reaped.clone();
    std::thread::Builder::new()
        .name("distlock-cli-wait".into())
        .spawn(move || {
            let _ = tx.send(wait_for(pid, &waiting));
        })
        .map_err(|e| Failure::os(format!("thread: {e}")).into_js(&env))?;
    Ok(Either::A(NativeChild {
        pid,
        reaped,
        exit: Mutex::new(Some(rx)),
    }))
}

/// Waits until `pid` ends, then reaps it under `reaped`.
fn wait_for(pid: i32, reaped: &Mutex<bool>) -> io::Result<ExitInfo> {
    loop {
        // SAFETY: `info` is a zeroed siginfo_t that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT;
        // SAFETY: plain system call on our own child.
        if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let mut reaped = reaped.lock().unwrap_or_else(|p| p.into_inner());
    let mut status = 0;
    loop {
        // SAFETY: plain system call on our own child, which has exited (so it returns at once).
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    *reaped = true;
    Ok(if libc::WIFSIGNALED(status) {
        ExitInfo {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
        }
    } else {
        ExitInfo {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    })
}

#[napi]
impl NativeChild {
    /// The command's process id.
    #[napi(getter)]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends signal number `signal` unless the command has ended; returns whether it was sent.
    #[napi]
    pub fn kill(&self, signal: i32) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: plain system call; the pid is our unreaped child (a zombie at worst) while
        // `reaped` is false and held.
        !*reaped && unsafe { libc::kill(self.pid, signal) } == 0
    }

    /// Resolves when the command ends (once; a second call rejects).
    #[napi]
    pub fn wait<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ExitInfo>> {
        let rx = self
            .exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::new(Status::InvalidArg, "wait() was already called"))?;
        promise(env, async move {
            match rx.await {
                Ok(Ok(info)) => Ok(info),
                Ok(Err(e)) => Err(Failure::os(format!("wait: {e}"))),
                Err(_) => Err(Failure::os("wait: no answer")),
            }
        })
    }
}
