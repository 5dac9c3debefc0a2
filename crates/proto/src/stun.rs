//! stun (being written)
