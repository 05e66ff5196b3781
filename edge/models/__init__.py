"""Model bundles: format, signing, the on-device model store and fleet updates."""
