"""Data intake: fetch, archives, layout discovery, image decoding, patient ids, synthetic data."""
