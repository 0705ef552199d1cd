//! A shared handle whose target can be replaced while readers hold the old one: how a projection
//! rebuilt by a live `chorus replay` is switched in without stopping the node.

use std::sync::Arc;

use parking_lot::RwLock;

pub struct Swap<T: ?Sized> {
    /// The current target; readers clone the `Arc` and keep it for the length of one request.
    current: RwLock<Arc<T>>,
}

impl<T: ?Sized> Swap<T> {
    pub fn new(target: Arc<T>) -> Self {
        Swap {
            current: RwLock::new(target),
        }
    }

    /// The current target.
    pub fn get(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Replaces the target; returns the previous one.
    pub fn replace(&self, target: Arc<T>) -> Arc<T> {
        std::mem::replace(&mut *self.current.write(), target)
    }
}
