//! Parse: recognise log lines. (in progress)
