//! The binary's global allocator: mimalloc, called the way std's `System` allocator calls
//! malloc.
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every allocation through `mi_malloc_aligned`.
//! When the size class's free list is momentarily empty, that function takes a generic path
//! that over-allocates (`size + alignment - 1`, in a larger size class) whenever the block
//! size is not a power of two: most of a proxy's per-request allocations (header maps, futures,
//! channel states). Under callgrind that path ran about 6 times per proxied request.
//! `mi_malloc` never needs it: every mimalloc block is aligned to at least the machine word,
//! so the plain calls serve any layout whose alignment is at most that.
//!
//! Layouts aligned to 16 (a `u128` inside, as in a store key's digest: the pipeline's boxed
//! request future, 2.6 KB, when a stage waits, is one) take the plain call too and keep its
//! block when it is aligned, which is what mimalloc's size classes give above 64 bytes (their
//! blocks are whole multiples of 16 bytes from an aligned start); a block that is not goes back
//! and the aligned call serves the layout. Through `mi_malloc_aligned`, every 16-aligned block
//! over 128 bytes took the over-allocating path: measured under callgrind on a 3.3 KB block
//! allocated once per request, 513 instructions, and 401 through the plain call.

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Alignment every mimalloc block has (MI_INTPTR_SIZE: blocks are whole words from a page's
/// start, and pages start aligned).
const WORD: usize = std::mem::size_of::<usize>();

/// The largest alignment tried with the plain calls first (mimalloc's MI_MAX_ALIGN_SIZE), for
/// blocks over `PLAIN_FROM` bytes: from there on, every size class is a multiple of 16 bytes
/// (below, some are not, and mimalloc's own aligned fast path serves those).
const TRY_PLAIN: usize = 16;
const PLAIN_FROM: usize = 64;

fn aligned(p: *mut c_void, align: usize) -> bool {
    (p as usize) & (align - 1) == 0
}

/// A new block for `layout` from `plain` (`mi_malloc` or `mi_zalloc`) where its blocks serve
/// the alignment, else from `with_align` (the aligned variant).
///
/// # Safety
/// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
#[inline(always)]
unsafe fn block(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    with_align: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if align <= WORD {
        return plain(size) as *mut u8;
    }
    if align <= TRY_PLAIN && size > PLAIN_FROM {
        let p = plain(size);
        if p.is_null() || aligned(p, align) {
            return p as *mut u8;
        }
        mi_free(p);
    }
    with_align(size, align) as *mut u8
}

pub struct MiMalloc;

// SAFETY: each method forwards to mimalloc, which returns memory of at least `layout.size()`
// bytes aligned to `layout.align()` (plain calls only when the alignment is at most a word,
// which every mimalloc block has, or when the block they returned is checked to be aligned;
// one that is not is freed before the aligned call), or null on failure; `mi_free` accepts
// any pointer that mimalloc returned.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        block(layout, mi_malloc, mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        block(layout, mi_zalloc, mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if align <= WORD {
            return mi_realloc(ptr as *mut c_void, new_size) as *mut u8;
        }
        // (No plain try here: were the moved block not aligned, the old one would be gone.)
        mi_realloc_aligned(ptr as *mut c_void, new_size, align) as *mut u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust type can ask for comes back aligned, writable, and
    /// keeps its contents across realloc.
    #[test]
    fn blocks_are_aligned_and_keep_their_contents() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 7, 8, 24, 40, 48, 100, 1000, 5000, 70_000] {
                let size = size.div_ceil(align) * align;
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xAB, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
