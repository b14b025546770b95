//! Site configuration (in progress).
