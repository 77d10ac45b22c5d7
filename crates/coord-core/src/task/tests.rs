//! Unit tests of the task queue.
