//! ts2021 Noise (being written)
