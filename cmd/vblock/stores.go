package main

// Store packages linked into vblock. Each registers its URL scheme with
// backend.Register from init; file:// and mem:// come with package backend.
// Keep this list and cmd/nbdkit-plugin/stores.go the same.
import (
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)
