//! Route auth modes and single-flight inline refresh.
