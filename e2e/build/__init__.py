"""
Building what a guest boots, one module per job:

* :mod:`.cpio`: the newc (``cpio -H newc``) archive writer and reader, and the
  image's file tree;
* :mod:`.elf`: host binaries for the image: ELF interpreter, ``ldd`` output,
  the files a tool needs;
* :mod:`.modules`: a fetched kernel's modules: dependencies (kmod's
  ``modinfo``), load order, copying them into the tree, built-in drivers;
* :mod:`.sshkey`: the SSH client identity every image authorises;
* :mod:`.image`: the guest initramfs itself, cached by content hash;
* :mod:`.kbuild`: the persistent build trees and ccache that make kernel
  rebuilds incremental.

* :mod:`.kconfig`: Kconfig fragments: parse, merge, render, the options a
  build dropped, pveoi's fragments (one config for guest and virtual host);
* :mod:`.bases`: the kernel bases pveoi ships a guest series for, and applying
  a patch series to a tree;
* :mod:`.kernel`: building a kernel from a base's source (or a tree) and
  pveoi's patch series, one build serving as guest and as virtual host;
* :mod:`.prebuilt`: kernels pveoi does not build (a path, a URL, Debian's
  package) put into the cache;
* :mod:`.vhostkernel`: an L1 kernel made bootable as the virtual host (a
  packaged kernel's initramfs that loads its KVM and 9p modules, its vmlinux);
* :mod:`.kentry`: a kernel's cache entry: finding and checking the entry a
  kernel file lies in, its manifest;
* :mod:`.bzimage`: a bzImage's header and contents;
* :mod:`.cache`: the content-addressed cache everything above lives in, and
  :mod:`.cachegc`: its size cap and pruning.

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`.
"""
