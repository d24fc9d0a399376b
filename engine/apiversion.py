"""The version of the engine API that plugins declare they target.

Its own module, importing nothing, so that checking a plugin object (the host does it for
every registered item) costs nothing where the contracts themselves are not needed, as
for an executor looked up before the command imports anything heavy.
"""

API_VERSION = "1"
"""The engine API version plugins declare they target (``api_version`` attribute); a
plugin whose major version differs is refused with a message naming both."""
