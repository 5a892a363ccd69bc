//! How a request reaches the core that owns a shard: the [`CoreCall`] trait (one type per
//! operation, with its reply type, served on the owning core) and the [`Router`] that carries
//! calls across threads.
//!
//! An operation is written once, as a type that implements [`CoreCall`] (the calls are in
//! [`super::core_calls`]); nothing else names it. A call about one user implements [`UserCall`]
//! and goes to the core of that user's shard; a call about every shard goes to each core in
//! turn ([`Router::call_each`]). A call between two threads is one boxed job on the target
//! core's channel and one reply channel; a call for the caller's own core is served in place
//! ([`super::core_context::CoreContext::call`]), with no hop at all.

use std::rc::Rc;

use porcupine_engine::Placement;

use super::service::CoreService;

/// One operation served by the core that owns the shards it touches.
// The future is served on the owning core's executor and never leaves it, so it need not be
// `Send` (the lint asks callers to consider a `Send` bound they must not have).
#[allow(async_fn_in_trait)]
pub trait CoreCall: Send + 'static {
    type Reply: Send + 'static;

    /// Serves the call on its core.
    async fn serve(self, service: &CoreService) -> Self::Reply;

    /// The answer when the owning core did not answer (it has stopped).
    fn unanswered() -> Self::Reply;
}

/// A call about one user: served by the core that owns the user's shard.
pub trait UserCall: CoreCall {
    fn user(&self) -> &str;
}

/// A call handed to a core's service loop; it runs there as its own task.
type Job = Box<dyn FnOnce(&Rc<CoreService>) + Send>;

/// What a core's service loop receives.
pub enum ToCore {
    Call(Job),
    /// Close the shards (finishing queued writes) and answer when done.
    Shutdown(flume::Sender<()>),
}

impl std::fmt::Debug for ToCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Call(_) => "ToCore::Call",
            Self::Shutdown(_) => "ToCore::Shutdown",
        })
    }
}

/// Sends calls to the core that owns a user (or to each core), from any thread. Cheap to
/// clone; `Send`.
#[derive(Clone, Debug)]
pub struct Router {
    placement: Placement,
    cores: Vec<flume::Sender<ToCore>>,
}

impl Router {
    pub fn new(placement: Placement, cores: Vec<flume::Sender<ToCore>>) -> Self {
        Self { placement, cores }
    }

    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The core whose shards hold `user`'s mail and profile.
    pub fn core_of(&self, user: &str) -> usize {
        self.placement.core_of(user) % self.cores.len().max(1)
    }

    /// Serves `call` on the core of its user.
    pub async fn call<C: UserCall>(&self, call: C) -> C::Reply {
        let core = self.core_of(call.user());
        self.call_on(core, call).await
    }

    /// Serves `call` on `core`, through that core's channel.
    pub async fn call_on<C: CoreCall>(&self, core: usize, call: C) -> C::Reply {
        let (reply, answer) = flume::bounded(1);
        let job: Job = Box::new(move |service: &Rc<CoreService>| {
            let service = service.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(call.serve(&service).await);
            })
            .detach();
        });
        let Some(sender) = self.cores.get(core) else {
            return C::unanswered();
        };
        if sender.send_async(ToCore::Call(job)).await.is_err() {
            return C::unanswered();
        }
        answer
            .recv_async()
            .await
            .unwrap_or_else(|_| C::unanswered())
    }

    /// Hands `call` to `core` and does not wait for it to be served.
    pub fn tell_on<C: CoreCall<Reply = ()>>(&self, core: usize, call: C) {
        let job: Job = Box::new(move |service: &Rc<CoreService>| {
            let service = service.clone();
            glommio::spawn_local(async move { call.serve(&service).await }).detach();
        });
        if let Some(sender) = self.cores.get(core) {
            let _ = sender.send(ToCore::Call(job));
        }
    }

    /// Serves `call` on every core, one after another: every core's answers, in core order.
    pub async fn call_each<C, T>(&self, call: C) -> Vec<T>
    where
        C: CoreCall<Reply = Vec<T>> + Clone,
    {
        let mut gathered = Vec::new();
        for core in 0..self.cores.len() {
            gathered.extend(self.call_on(core, call.clone()).await);
        }
        gathered
    }

    /// Whether every core runs tasks: each is handed a job that answers from a task of its
    /// own, within `timeout` (from any thread; the service manager's watchdog asks this).
    /// `Err(core)`: the first core that did not answer.
    pub fn ping_each(&self, timeout: std::time::Duration) -> Result<(), usize> {
        let deadline = std::time::Instant::now() + timeout;
        let mut answers = Vec::with_capacity(self.cores.len());
        for (core, sender) in self.cores.iter().enumerate() {
            let (reply, answer) = flume::bounded(1);
            let job: Job = Box::new(move |_: &Rc<CoreService>| {
                glommio::spawn_local(async move {
                    let _ = reply.send(());
                })
                .detach();
            });
            sender
                .send_deadline(ToCore::Call(job), deadline)
                .map_err(|_| core)?;
            answers.push(answer);
        }
        for (core, answer) in answers.into_iter().enumerate() {
            answer.recv_deadline(deadline).map_err(|_| core)?;
        }
        Ok(())
    }

    /// Asks `core` to close its shards; the answer arrives on `reply` (usable from any thread).
    pub fn send_shutdown(&self, core: usize, reply: flume::Sender<()>) -> bool {
        self.cores
            .get(core)
            .is_some_and(|c| c.send(ToCore::Shutdown(reply)).is_ok())
    }
}
