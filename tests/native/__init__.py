"""Tests of the Rust extension ``kim_appliance._native`` against independent Python oracles."""
