//! Log sources. (in progress)
