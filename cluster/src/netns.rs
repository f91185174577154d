//! Driver code that runs *on* a lab host: a tokio runtime on its own thread inside a host's
//! network namespace, so that every socket its tasks open comes from that host's address and
//! takes that host's network faults.
//!
//! The sharded lab's routers are libraries, not servers; running each one on its own namespace
//! host is what lets a scenario cut a router off for real (its agent's nftables rules drop its
//! packets) rather than by pretending in the router's code.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A single-threaded tokio runtime whose thread lives in one network namespace. Tasks spawned
/// on it open their sockets there. Dropping it stops the runtime (its tasks are dropped on its
/// own thread, inside the namespace and the runtime) and joins the thread.
pub struct NamespaceRuntime {
    namespace: String,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NamespaceRuntime {
    /// Starts the thread, moves it into namespace `namespace` (`ip netns` name; needs root) and
    /// starts the runtime there.
    pub fn start(namespace: &str) -> Result<NamespaceRuntime, String> {
        let path = format!("/run/netns/{namespace}");
        let netns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{namespace}"))
            .spawn(move || {
                let runtime = enter(&netns).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("a runtime: {e}"))
                });
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Drives every task spawned through the handle until told to stop; the
                // runtime (and what its tasks hold) is then dropped here, on this thread.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("a thread for {namespace}: {e}"))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| format!("the thread for {namespace} ended before its runtime started"))?
            .map_err(|e| format!("network namespace {namespace}: {e}"))?;
        Ok(NamespaceRuntime {
            namespace: namespace.to_string(),
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The namespace it runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `task` on this runtime, inside the namespace.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for NamespaceRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread into the network namespace `netns` is open on.
fn enter(netns: &File) -> Result<(), String> {
    // SAFETY: setns on a valid descriptor; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setns: {}", std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_one_error() {
        let e = NamespaceRuntime::start("ql-no-such-namespace")
            .err()
            .expect("no such namespace");
        assert!(e.contains("/run/netns/ql-no-such-namespace"), "{e}");
    }
}
