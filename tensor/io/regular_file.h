// Opening user files for reading, refusing anything but a regular file: a FIFO named
// model.safetensors blocks the open (or the read) until some writer appears, a device such as
// /dev/zero never ends, and a directory gives obscure read errors. The open itself is
// non-blocking, so a FIFO is refused at once instead of waited on.
//
// Header-only: the fuzz targets compile the few library sources they exercise, and every
// reader of user files (JSON, safetensors, datasets, tokenizers) can use this without
// adding a source to each of them.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>

#include "tensor/error.h"

namespace lamina::io {

// What a file that is not regular is, for errors.
inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// A descriptor of `path` open for reading (the caller closes it). Symlinks are followed.
// Throws lamina::Error "<what>: cannot open PATH: <reason>" or "<what>: PATH is a FIFO
// (named pipe), not a regular file".
inline int open_regular_file(const std::string& path, std::string_view what) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // O_NONBLOCK: see above
  LAMINA_CHECK(descriptor >= 0, what, ": cannot open ", path, ": ", std::strerror(errno));
  struct stat status {};
  if (::fstat(descriptor, &status) != 0) {
    const int error = errno;
    ::close(descriptor);
    throw Error(str_cat(what, ": cannot stat ", path, ": ", std::strerror(error)));
  }
  if (!S_ISREG(status.st_mode)) {
    ::close(descriptor);
    throw Error(str_cat(what, ": ", path, " is ", file_kind(status.st_mode), ", not a regular file"));
  }
  // Reads of a regular file never block anyway; clear the flag so the descriptor is ordinary.
  ::fcntl(descriptor, F_SETFL, ::fcntl(descriptor, F_GETFL) & ~O_NONBLOCK);
  return descriptor;
}

// For readers that open the file themselves (std::ifstream): the same checks, without
// keeping the file open.
inline void check_regular_file(const std::string& path, std::string_view what) {
  ::close(open_regular_file(path, what));
}

// The whole contents of a regular file.
inline std::string read_regular_file(const std::string& path, std::string_view what) {
  const int descriptor = open_regular_file(path, what);
  std::string contents;
  struct stat status {};
  if (::fstat(descriptor, &status) == 0) contents.reserve(size_t(status.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(descriptor, buffer, sizeof buffer);
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(descriptor);
      throw Error(str_cat(what, ": error reading ", path, ": ", std::strerror(error)));
    }
    contents.append(buffer, size_t(got));
  }
  ::close(descriptor);
  return contents;
}

}  // namespace lamina::io
