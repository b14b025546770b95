//! JDL reader (in progress).
