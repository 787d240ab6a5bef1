//! Blocking file I/O, done one way in both services: the state that does the I/O (the edge's spool,
//! the sink's storage) moves to tokio's blocking pool for the call and comes back with the result,
//! so the async task that owns it never blocks a runtime thread, on any runtime flavour.

/// Runs `work` on `state` on the blocking pool and hands both back.
pub async fn on_blocking_pool<S, T>(
    mut state: S,
    work: impl FnOnce(&mut S) -> T + Send + 'static,
) -> (S, T)
where
    S: Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let out = work(&mut state);
        (state, out)
    })
    .await
    // A panic in blocking I/O is a bug: let it reach the task that owns the state.
    .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}
