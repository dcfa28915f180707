"""A real SMTP server with TLS and authentication for the notifier tests, built on aiosmtpd
(whose command line cannot require authentication). Messages go to a directory through
smtp_sink.Sink, as with the plain server.

    PYTHONPATH=testkit python3 smtp_secure.py --port PORT --dir DIR --cert C --key K \
        (--starttls | --implicit-tls) [--user NAME --password SECRET]

--starttls: plain connection, STARTTLS required before anything else (port 587 style).
--implicit-tls: TLS from the first byte (port 465 style).
With --user, AUTH (PLAIN/LOGIN, over TLS only) is required before MAIL FROM; a wrong password
is answered 535 by aiosmtpd.
"""

import argparse
import asyncio
import ssl

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from smtp_sink import Sink


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--starttls", action="store_true")
    mode.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    handler = Sink(args.dir)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        # handled=False: aiosmtpd answers 535 itself (its default, True, answers nothing).
        return AuthResult(success=ok, handled=False)

    def factory():
        return SMTP(
            handler,
            hostname="localhost",
            # STARTTLS mode: the context is offered for the upgrade and required.
            tls_context=context if args.starttls else None,
            require_starttls=args.starttls,
            auth_required=args.user is not None,
            # aiosmtpd cannot tell that an implicit-TLS connection is encrypted (it only
            # tracks STARTTLS), so it would never offer AUTH there; both modes are TLS.
            auth_require_tls=args.starttls,
            authenticator=authenticator if args.user is not None else None,
        )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            factory,
            host="127.0.0.1",
            port=args.port,
            ssl=context if args.implicit_tls else None,
        )
    )
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
