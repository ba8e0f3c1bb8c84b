/*
 * printable.c - text from a peer or the command line made fit to show.
 */
#include <stdint.h>
#include <string.h>

#include "printable.h"

/* The code point of the UTF-8 sequence at s (n bytes left) in *cp; returns
 * its length, or 0 if it is not valid UTF-8 (overlong forms, surrogates and
 * code points past U+10FFFF are not). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t min;
	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	} else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2, min = 0x80, *cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3, min = 0x800, *cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4, min = 0x10000, *cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		*cp = *cp << 6 | (s[i] & 0x3f);
	}
	if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
		return 0;
	return len;
}

/* Characters a terminal acts on or that hide or reorder text: C0 and C1
 * controls, DEL, and Unicode's invisible format characters (zero widths,
 * line and paragraph separators, bidirectional overrides, BOM). */
static int unprintable(uint32_t cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || (cp >= 0x200b && cp <= 0x200f) ||
	       (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2060 && cp <= 0x206f) || cp == 0xfeff;
}

const char *md__printable(const char *s, char *buf, size_t size)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s), o = 0;
	while (left) {
		uint32_t cp;
		size_t len = utf8_decode(p, left, &cp);
		int bad = len == 0 || unprintable(cp);
		size_t out = bad ? 1 : len;
		if (o + out >= size)
			break;
		if (bad)
			buf[o] = '?';
		else
			memcpy(buf + o, p, len);
		o += out;
		len = len ? len : 1;
		p += len;
		left -= len;
	}
	buf[o] = '\0';
	return buf;
}
