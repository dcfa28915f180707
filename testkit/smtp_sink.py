"""An aiosmtpd handler for the notifier tests: each message accepted is written to its own
file in the directory given on the command line (atomically: written, then renamed).

    PYTHONPATH=notifier/tests python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.Sink DIR
"""

import os
import time
import uuid


class Sink:
    def __init__(self, directory):
        self.directory = directory

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("smtp_sink.Sink takes one argument: the output directory")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.directory, f"{time.time_ns()}-{uuid.uuid4().hex}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            for rcpt in envelope.rcpt_tos:
                f.write(f"X-Envelope-To: {rcpt}\r\n".encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(name + ".tmp", name)
        return "250 Message accepted for delivery"
