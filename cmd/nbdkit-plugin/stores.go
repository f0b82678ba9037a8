package main

// Store packages linked into the plugin. Each registers its URL scheme with
// backend.Register from init; file:// and mem:// come with package backend.
// Add new stores here (and in cmd/vblock/stores.go), e.g.:
//
//	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
import (
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)
