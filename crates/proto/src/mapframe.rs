//! mapframe (being written)
