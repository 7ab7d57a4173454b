"""Primitives for secure aggregation, apart from the protocol that uses them.

One concern per module: ``keys`` (X25519 key pairs, agreement, signed key adverts), ``shamir``
(threshold sharing of 32-byte secrets), ``prg`` (AES-CTR mask expansion), ``aead`` (pairwise
authenticated encryption of shares), ``quantize`` (clipping and stochastic fixed-point rounding).
Every cryptographic operation comes from ``cryptography``; only Shamir's arithmetic is ours.
"""
