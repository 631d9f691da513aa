//! Polling a future again at once when it wakes itself: see [`Repoll`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

pub(crate) const REPOLL_IDLE: u8 = 0;
pub(crate) const REPOLL_POLLING: u8 = 1;
pub(crate) const REPOLL_WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// Polls `F` again at once when it wakes itself while being polled, at most
    /// [`Repoll::AGAIN`] times in a row, instead of passing the wake-up on.
    ///
    /// A task that is woken while it runs is put at the back of tokio's run queue once its poll
    /// returns, and a wake-up that comes while it waits there changes nothing. hyper's HTTP/1
    /// connection wakes its own task whenever it hands a request body to the handler (its body
    /// channel), so after each `POST` the publisher's connection waited behind every task queued
    /// then, and its next request with it: under a fan-out, every subscriber the publish had just
    /// woken (0.1-0.2 s at 10 000 subscribers, a few times per 300 publishes). Wake-ups from
    /// elsewhere (the socket, a timer, another task) are passed on as they come.
    pub(crate) struct Repoll<F> {
        #[pin]
        inner: F,
        shared: Arc<RepollWaker>,
        waker: std::task::Waker,
    }
}

/// The waker [`Repoll`] gives its future: notes a wake-up while the future is polled, else
/// passes it on to the task's own waker.
pub(crate) struct RepollWaker {
    state: std::sync::atomic::AtomicU8,
    task: Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for RepollWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let noted = self.state.compare_exchange(REPOLL_POLLING, REPOLL_WOKEN, Ordering::AcqRel, Ordering::Acquire);
        match noted {
            // Being polled: the poll loop polls again.
            Ok(_) | Err(REPOLL_WOKEN) => {}
            Err(_) => {
                if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                    task.wake_by_ref();
                }
            }
        }
    }
}

impl<F: Future> Repoll<F> {
    /// Polls in a row at most: a future that keeps waking itself (hyper yields on purpose after
    /// serving many pipelined requests in one poll) does get its wake-up passed on.
    const AGAIN: usize = 2;

    pub(crate) fn new(inner: F) -> Repoll<F> {
        let shared =
            Arc::new(RepollWaker { state: std::sync::atomic::AtomicU8::new(REPOLL_IDLE), task: Mutex::new(None) });
        let waker = std::task::Waker::from(shared.clone());
        Repoll { inner, shared, waker }
    }

    pub(crate) fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let mut this = self.project();
        {
            let mut task = this.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = std::task::Context::from_waker(this.waker);
        for _ in 0..Self::AGAIN {
            this.shared.state.store(REPOLL_POLLING, Ordering::Release);
            if let std::task::Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(REPOLL_IDLE, Ordering::Release);
                return std::task::Poll::Ready(output);
            }
            let idle =
                this.shared.state.compare_exchange(REPOLL_POLLING, REPOLL_IDLE, Ordering::AcqRel, Ordering::Acquire);
            if idle.is_ok() {
                return std::task::Poll::Pending; // not woken meanwhile
            }
        }
        this.shared.state.store(REPOLL_IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that is pending for `polls` polls, waking itself during the first `self_wakes`
    /// of them, and keeps its last waker.
    struct Nagging {
        polls: usize,
        self_wakes: usize,
        seen: Arc<AtomicUsize>,
        last: LastWaker,
    }

    impl Future for Nagging {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            *self.last.lock().unwrap() = Some(cx.waker().clone());
            if n >= self.polls {
                return std::task::Poll::Ready(());
            }
            if self.self_wakes > 0 {
                self.self_wakes -= 1;
                cx.waker().wake_by_ref();
            }
            std::task::Poll::Pending
        }
    }

    struct CountingWaker(AtomicUsize);
    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The last waker a future was polled with.
    type LastWaker = Arc<Mutex<Option<std::task::Waker>>>;

    fn nagging(polls: usize, self_wakes: usize) -> (Pin<Box<Repoll<Nagging>>>, Arc<AtomicUsize>, LastWaker) {
        let seen = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let future = Nagging { polls, self_wakes, seen: seen.clone(), last: last.clone() };
        (Box::pin(Repoll::new(future)), seen, last)
    }

    #[test]
    fn a_wake_up_during_its_own_poll_polls_again_instead_of_waking_the_task() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(task.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut future, seen, last) = nagging(10, 1);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.load(Ordering::SeqCst), 2, "polled again at once");
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task was not woken");
        // A wake-up from elsewhere, once the poll is over, reaches the task.
        last.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(task.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let (mut future, seen, _last) = nagging(100, 100);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.load(Ordering::SeqCst), Repoll::<Nagging>::AGAIN);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the wake-up is passed on after a few polls");
        // And it completes like the future it wraps.
        let (mut future, _, _) = nagging(2, 1);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_ready());
    }
}
