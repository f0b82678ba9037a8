/* The C side of the viperblock nbdkit plugin: see shim.c. */
#ifndef VIPERBLOCK_SHIM_H
#define VIPERBLOCK_SHIM_H

#define NBDKIT_API_VERSION 2
#include <stdint.h>
#include <nbdkit-plugin.h>

/* Helpers the Go side calls. Each copies what it needs before returning, so
 * Go never hands C a pointer that C keeps. */
void vb_error (int err, const char *msg);
void vb_debug (const char *msg);
void vb_log (const char *level, const char *msg);
void vb_print (const char *msg);
int vb_add_extent (struct nbdkit_extents *e, uint64_t off, uint64_t len, uint32_t type);
void vb_shutdown (void);

#endif
