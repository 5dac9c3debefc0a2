//! derp (being written)
