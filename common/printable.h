#ifndef MD_PRINTABLE_H
#define MD_PRINTABLE_H

#include <stddef.h>

/* Copies s into buf (size > 0) fit for a terminal and for JSON: printable
 * characters of valid UTF-8 as they are, '?' for each control character
 * (C0, DEL, C1), invisible format character, and byte that is not valid
 * UTF-8. Stops before a character that would not fit. Returns buf. */
const char *md__printable(const char *s, char *buf, size_t size);

#endif
