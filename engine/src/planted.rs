//! Defects planted on purpose, to prove that the simulator finds real bugs. Compiled in only
//! with the `planted-defects` feature; without it `active` is a constant `false` and every
//! planted branch disappears from the build. A defect is planted for the calling thread only
//! (the simulator runs the engine on one thread), so tests running side by side do not see
//! each other's defects.

use crate::sim::Defect;

#[cfg(feature = "planted-defects")]
thread_local! {
    static PLANTED: std::cell::Cell<Defect> = const { std::cell::Cell::new(Defect::None) };
}

/// Plants `defect` for this thread (no effect without the feature).
pub(crate) fn plant(defect: Defect) {
    #[cfg(feature = "planted-defects")]
    PLANTED.with(|planted| planted.set(defect));
    #[cfg(not(feature = "planted-defects"))]
    let _ = defect;
}

/// Whether `defect` is planted on this thread.
#[inline(always)]
pub(crate) fn active(defect: Defect) -> bool {
    #[cfg(feature = "planted-defects")]
    return defect != Defect::None && PLANTED.with(|planted| planted.get() == defect);
    #[cfg(not(feature = "planted-defects"))]
    {
        let _ = defect;
        false
    }
}
