"""Twisted plugin: makes ``twistd chatd`` available (imports nothing heavy)."""

from twisted.application.service import ServiceMaker

chatd = ServiceMaker("chatd", "chatd.tap", "A JSON chat server (the classic KTN protocol and v2).", "chatd")
