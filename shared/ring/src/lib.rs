//! The hash ring (work in progress).
