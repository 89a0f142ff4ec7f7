//! Runnable examples for plumcast: see the files beside this one.
