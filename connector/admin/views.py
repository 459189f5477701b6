"""The owner's admin pages (/admin): sign in, stores, orders, outbox and mails, audit log.

Every page needs a signed-in admin; every form is CSRF-protected (Flask-WTF); templates are
autoescaped. Admins created by `keygate init` see every store; admins added with
`keygate admin add --store ID` see that store only: its orders, licenses, mails, audit
entries, webhook deliveries, store page and credentials (anything else is 404), and not the
job queue, which is shared by all stores, nor adding a store.

A store's webhook secret and admin API token are shown once, in the answer to the POST that
made them (``Cache-Control: no-store``), never kept in the session or shown again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import cache, wraps
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from sqlalchemy import func, or_, select
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException
from werkzeug.security import check_password_hash, generate_password_hash

from connector.audit import record_audit, shown_actor, store_admin_names
from connector.db import db
from connector.downloads.storage import own_area, storage_in_use
from connector.errors import (
    KeygateError,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
    wait_in_words,
)
from connector.extensions import client_network_key, limiter
from connector.jobs import retry_dead, store_jobs, store_of
from connector.jobs import stats as job_stats
from connector.licensing.export import license_csv_response
from connector.licensing.keys import KeyFormat
from connector.mail.service import mail_route
from connector.models import (
    AdminUser,
    AuditEvent,
    DownloadGrant,
    Job,
    License,
    Mail,
    Order,
    Store,
    WatermarkCopy,
    WebhookDelivery,
)
from connector.models.records import BAD_SIGNATURE
from connector.orders.refund_notices import open_refund_notices
from connector.orders.summary import order_entitlements
from connector.privacy import store_deletion
from connector.stores import (
    change_store,
    create_store,
    key_format,
    replace_api_token,
    setup_details,
)
from connector.validation import is_control_character, row_id, whole_number
from connector.vault import connection as shop_connection
from connector.vault.checks import CHECKED_KINDS, CheckResult, check_credentials, checkable
from connector.vault.service import (
    FIELDS,
    credentials_for,
    has_credentials,
    masked,
    parse_credentials,
)
from connector.vault.views import credential_checks

from . import attention, sign_in
from .forms import (
    ConfirmedForm,
    ConfirmForm,
    DeleteStoreForm,
    LoginForm,
    PasswordForm,
    admin_username,
)
from .paging import newest_first, older_address, with_arguments

bp = Blueprint("admin_views", __name__, url_prefix="/admin")
F = TypeVar("F", bound=Callable[..., Any])
PAGE = 50


@cache
def _dummy_hash() -> str:
    """A hash to check against when the user does not exist, so both paths cost the same."""
    return generate_password_hash(secrets.token_urlsafe(16))


def signed_in_admin() -> AdminUser | None:
    """The admin this browser's session belongs to, or None: the user must still exist
    under the name it signed in with (a removed admin's id may be given to a new one) and
    its sessions must not have been ended since (a new password)."""
    user_id = session.get("admin_user_id")
    user = db.session.get(AdminUser, user_id) if isinstance(user_id, int) else None
    if (
        user is None
        or session.get("admin_username") != user.username
        or session.get("generation") != user.session_generation
    ):
        return None
    return user


def login_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = signed_in_admin()
        if user is None:
            return redirect(url_for("admin_views.login", next=request.path))
        g.admin_user = user
        return view(*args, **kwargs)

    return cast(F, wrapper)


def _scope() -> int | None:
    """The one store the signed-in admin may see, or None for every store."""
    user: AdminUser = g.admin_user
    return user.store_id


def _scoped(query: Any, store_column: Any) -> Any:
    scope = _scope()
    return query if scope is None else query.where(store_column == scope)


def _visible(store_id: int | None) -> bool:
    scope = _scope()
    return scope is None or store_id == scope


def _global_only() -> None:
    if _scope() is not None:
        abort(404)


def _safe_next(target: str | None) -> str:
    # Only local paths: never an open redirect to another site. No control characters
    # either: a CR or LF would split the Location header (a 500, or worse).
    if (
        target
        and target.startswith("/admin")
        and "//" not in target
        and "\\" not in target
        and not any(is_control_character(c) for c in target)
    ):
        return target
    return url_for("admin_views.dashboard")


def _form_page(path: str) -> str:
    """The admin page a form posted to ``path`` lives on: the path itself if it is a page
    (a GET route), else its nearest parent that is (``/admin/licenses/5/revoke`` is posted
    from ``/admin/licenses/5``); the dashboard for none. Same-site paths only."""
    adapter = current_app.create_url_adapter(request)
    candidate = path.rstrip("/") or "/"
    while adapter is not None and candidate.startswith("/admin"):
        try:
            adapter.match(candidate, method="GET")
        except (HTTPException, RoutingException):
            candidate = candidate.rsplit("/", 1)[0]
            continue
        return _safe_next(candidate)
    return url_for("admin_views.dashboard")


def stale_form(_exc: CSRFError) -> ResponseReturnValue:
    """A form refused by its CSRF check. The sign-in form: shown again, to be sent again.
    Signed out meanwhile (in another tab, or the session ended): to the sign-in, and back to
    the form's page after it. Still signed in (a form left open across a sign-out and back
    in): say so, and lead back to the page."""
    if request.endpoint == "admin_views.login":  # the sign-in form, posted to where it was
        error = "This sign-in page was open too long. Please sign in again."
        return render_template("admin/login.html", form=LoginForm(), error=error), 400
    if signed_in_admin() is None:
        return redirect(url_for("admin_views.login", next=_form_page(request.path)))
    page = render_template(
        "errors/generic.html",
        status=400,
        title="This form was open too long",
        detail="This form was open too long; reload the page and try again.",
        back=_form_page(request.path),
        back_label="Back to the page",
    )
    return page, 400


bp.register_error_handler(CSRFError, stale_form)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    "10/minute",
    methods=["POST"],
    on_breach=sign_in.record_address_refusal,
    key_func=client_network_key,
)
def login() -> ResponseReturnValue:
    """Sign in. Besides the per-address limit above, each sign-in spends its account's
    budget, or its device's, before the password is checked (:mod:`connector.admin.sign_in`)."""
    form = LoginForm()
    if request.method != "POST":
        return render_template("admin/login.html", form=form, error=None)
    user = None
    submitted = form.validate_on_submit()
    if submitted:
        user = db.session.execute(
            select(AdminUser).where(AdminUser.username == form.username.data)
        ).scalar_one_or_none()
    # As the sign-in matches it (" admin" is admin's budget); an empty or overlong name
    # spends a budget too.
    spent = sign_in.spend(admin_username(str(request.form.get("username", ""))[:200]), user)
    if spent.refused:
        sign_in.record_refusal(db.session, spent, user)
        return _sign_in_refused(form, spent)
    if submitted:
        password = form.password.data or ""
        valid = check_password_hash(user.password_hash if user else _dummy_hash(), password)
        if user is not None and valid:
            sign_in.give_back(spent)
            session.clear()
            session["admin_user_id"] = user.id
            session["admin_username"] = user.username
            session["generation"] = user.session_generation
            record_audit(db.session, store_id=None, actor=user.username, action="admin.login")
            response = redirect(_safe_next(request.args.get("next")))
            sign_in.remember_device(response, user, spent)
            return response
    # A wrong password, no such user, or an empty or overlong field: all alike.
    page = render_template(
        "admin/login.html", form=form, error="Wrong user or password.", wrong=True
    )
    return page, 401


def _sign_in_refused(form: LoginForm, spent: sign_in.Spent) -> ResponseReturnValue:
    """429 on the sign-in page itself: the password was not checked."""
    retry_after = spent.retry_after()
    where = "from this browser" if spent.scope == "device" else "for this user"
    error = (
        f"Too many failed sign-ins {where}. You can try again in {wait_in_words(retry_after)};"
        " the password was not checked."
    )
    page = render_template("admin/login.html", form=form, error=error)
    return page, 429, {"Retry-After": str(retry_after)}


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    if not ConfirmForm().validate_on_submit():
        abort(400)
    user: AdminUser = g.admin_user
    user.session_generation += 1  # every copy of this sign-in's cookie ends here
    session.clear()
    return redirect(url_for("admin_views.login"))


def _signed_in_admin_key() -> str:
    """The rate-limit key of the signed-in admin, whatever the address they post from."""
    user: AdminUser = g.admin_user
    return f"admin-password:{user.id}"


@bp.route("/password", methods=["GET", "POST"])
@login_required
@limiter.limit("10/hour", methods=["POST"], key_func=client_network_key)
@limiter.limit("10/hour", methods=["POST"], key_func=_signed_in_admin_key)
def password() -> ResponseReturnValue:
    """The signed-in admin changes their password; every other session of theirs ends.

    The current password is asked again, and checked at most 10 times an hour per address
    and 10 times an hour per admin: someone holding a copy of the session cookie must not
    guess it from many addresses (it outlives the session, which a sign-out or 12 hours
    end)."""
    user: AdminUser = g.admin_user
    form = PasswordForm()
    error = None
    if form.validate_on_submit():
        if check_password_hash(user.password_hash, form.current.data or ""):
            device = sign_in.device_before_new_password(user)
            user.set_password(form.new.data or "")
            session["generation"] = user.session_generation  # this browser stays signed in
            record_audit(db.session, store_id=None, actor=user.username, action="admin.password")
            response = redirect(url_for("admin_views.password", changed=1))
            sign_in.keep_device(response, user, device)  # and keeps its way past a lockout
            return response
        error = "The current password is not right."
    status = 400 if error or form.errors else 200
    return render_template("admin/password.html", form=form, error=error), status


@bp.get("/")
@login_required
def dashboard() -> ResponseReturnValue:
    stores = _visible_stores()
    counts = dict(
        db.session.execute(
            _scoped(select(Order.store_id, func.count()), Order.store_id).group_by(Order.store_id)
        ).all()
    )
    deliveries = db.session.scalars(
        _scoped(select(WebhookDelivery), WebhookDelivery.store_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(20)
    ).all()
    return render_template(
        "admin/dashboard.html",
        notices=attention.notices(db.session, stores)
        + (attention.sign_in_lockouts(db.session) if _scope() is None else []),
        stores=stores,
        order_counts=counts,
        jobs=job_stats() if _scope() is None else None,
        may_add_stores=_scope() is None,
        deliveries=deliveries,
        form=ConfirmForm(),
    )


@bp.route("/orders", methods=["GET", "POST"])
@login_required
def orders() -> ResponseReturnValue:
    """Orders newest first; found by order number or buyer email from the form, which is
    POSTed (with its paging) so that no buyer's address lands in a URL, a browser's history
    or an access log."""
    form = ConfirmForm()
    if request.method == "POST" and not form.validate_on_submit():
        abort(400)
    values = request.form if request.method == "POST" else {}
    query = _scoped(select(Order), Order.store_id)
    wanted = (values.get("q") or "").strip()[:320]
    if "@" in wanted:
        query = query.where(Order.email == wanted.lower())
    elif wanted:
        number = wanted.removeprefix("#")
        query = query.where(or_(Order.number == number, Order.shop_order_id == number))
    rows, older = _newest_first(query, Order.id, PAGE, values.get("before"))
    return render_template("admin/orders.html", orders=rows, wanted=wanted, older=older, form=form)


def _newest_first(
    query: Any,
    id_column: Any,
    size: int,
    posted_before: str | None = None,
    *,
    param: str = "before",
) -> tuple[list[Any], int | None]:
    """One page of rows, newest first, from ``before`` (``?before=<id>``, or posted) on; and
    the id to pass as ``before`` for the next older page (None on the last one). ``param``
    names the query's argument, for a page with two lists paged apart. A ``before`` that is
    no row id (a stale or typed address) is ignored: the newest page."""
    before = row_id(posted_before or request.args.get(param) or "")
    return newest_first(query, id_column, size, before)


@bp.get("/orders/<int:order_id>")
@login_required
def order_detail(order_id: int) -> ResponseReturnValue:
    order = db.session.get(Order, order_id)
    if order is None or not _visible(order.store_id):
        abort(404)
    return _order_page(order)


def _unpaid_licenses(order: Order) -> dict[int, str]:
    """Why each of the order's paused or revoked keys cannot be reinstated now (its order
    does not pay for it), by license id: the page offers no Reinstate for those."""
    from connector.licensing.admin import not_paid_for

    paused = db.session.scalars(
        select(License).where(License.order_id == order.id, License.status != "active")
    )
    return {lic.id: why for lic in paused if (why := not_paid_for(db.session, lic)) is not None}


def _order_page(
    order: Order,
    *,
    resend_refused: str | None = None,
    license_error: str | None = None,
    privacy_error: str | None = None,
    erase_refused: bool = False,
    status: int = 200,
) -> ResponseReturnValue:
    from connector.privacy.service import is_buyer_without_address

    mails = (
        db.session.execute(select(Mail).where(Mail.order_id == order.id).order_by(Mail.id))
        .scalars()
        .all()
    )
    # Why a mail is not sent yet: its job's last failure (and when it tries again).
    mail_jobs = {
        job.id: job
        for job in db.session.scalars(
            select(Job).where(
                Job.id.in_([m.job_id for m in mails if m.sent_at is None and m.job_id])
            )
        )
    }
    # What went wrong that the buyer cannot tell the owner: copies that failed to stamp
    # (every click of that link is refused), refunds Keygate could not apply.
    watermark_errors = dict(
        db.session.execute(
            select(WatermarkCopy.grant_id, WatermarkCopy.error)
            .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
            .where(DownloadGrant.order_id == order.id, WatermarkCopy.status == "failed")
        ).all()
    )
    # Only while the order stands: refunded or cancelled whole, every key is revoked anyway.
    refund_trouble = (
        None
        if order.is_revoking
        else db.session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.store_id == order.store_id,
                AuditEvent.subject == f"order:{order.shop_order_id}",
                open_refund_notices(),
            )
            .order_by(AuditEvent.id.desc())
            .limit(1)
        ).first()
    )
    page = render_template(
        "admin/order.html",
        order=order,
        mails=mails,
        form=ConfirmForm(),
        resend_refused=resend_refused,
        license_error=license_error,
        watermark_errors=watermark_errors,
        mail_jobs=mail_jobs,
        unpaid=_unpaid_licenses(order),
        refund_trouble=refund_trouble,
        buyer_by_order=is_buyer_without_address(order),
        privacy_error=privacy_error,
        erase_refused=erase_refused,
        **order_entitlements(db.session, order),
    )
    return page, status


JOB_STATUSES = ("pending", "running", "done", "dead")


@bp.get("/outbox")
@login_required
def outbox() -> ResponseReturnValue:
    """Jobs (an admin of one store sees its store's, and may retry those given up on) and
    mails, newest first, each list paged on its own (``?before=``, ``?mails_before=``: an
    Older link keeps the other list's page and the filter); ``?status=dead`` finds the jobs
    given up on however many came after them; ``?kind=`` (repeated) keeps the jobs of those
    kinds, and ``?store=<id>`` one store's (the dashboard's notice of dead jobs links so)."""
    scope = _scope()
    everything = scope is None
    store_id = row_id(request.args.get("store") or "")
    if scope is not None or store_id is None:
        store_id = None  # an admin of one store sees its own anyway
        jobs = select(Job) if scope is None else store_jobs(scope)
    else:
        jobs = store_jobs(store_id)
    status = request.args.get("status") or ""
    if status in JOB_STATUSES:
        jobs = jobs.where(Job.status == status)
    else:
        status = ""
    kinds = sorted(
        {
            kind[:64]
            for kind in request.args.getlist("kind")
            if kind and not any(is_control_character(c) for c in kind)  # PostgreSQL: no NUL
        }
    )
    if kinds:
        jobs = jobs.where(Job.kind.in_(kinds))
    job_rows, older_jobs = _newest_first(jobs, Job.id, PAGE)
    mails, older_mails = _newest_first(
        _scoped(select(Mail), Mail.store_id), Mail.id, PAGE, param="mails_before"
    )
    return render_template(
        "admin/outbox.html",
        jobs=job_rows,
        mails=mails,
        status=status,
        statuses=JOB_STATUSES,
        kinds=kinds,
        store=db.session.get(Store, store_id) if store_id is not None else None,
        older_jobs=None if older_jobs is None else older_address(older_jobs),
        older_mails=None if older_mails is None else older_address(older_mails, "mails_before"),
        stats=job_stats() if everything else None,
        form=ConfirmForm(),
        retry_address=lambda job_id: with_arguments(
            url_for("admin_views.retry_job", job_id=job_id)
        ),
    )


@bp.get("/outbox/mails/<int:mail_id>")
@login_required
def mail_detail(mail_id: int) -> ResponseReturnValue:
    mail = db.session.get(Mail, mail_id)
    if mail is None or not _visible(mail.store_id):
        abort(404)
    return render_template("admin/mail.html", mail=mail, form=ConfirmForm())


@bp.post("/outbox/jobs/<int:job_id>/retry")
@login_required
def retry_job(job_id: int) -> ResponseReturnValue:
    if not ConfirmForm().validate_on_submit():
        abort(400)
    job = db.session.get(Job, job_id)
    store_id = store_of(db.session, job.payload) if job is not None else None
    if job is None or not _visible(store_id):
        abort(404)  # an admin of one store retries that store's jobs only
    retry_dead(db.session, job, store_id=store_id, actor=_admin_name())
    # Back to the outbox as it was (the form posts its filter and pages): the next dead job
    # of a filtered list is a click away.
    return redirect(with_arguments(url_for("admin_views.outbox")))


@bp.get("/audit")
@login_required
def audit() -> ResponseReturnValue:
    """The audit log newest first, of one kind of entry when ``?action=`` names it (an
    action, never personal data, so it may stand in the address). An admin of one store
    sees the admins who are not the store's own as ``admin`` (see
    :func:`connector.audit.shown_actor`)."""
    action = (request.args.get("action") or "").strip()[:64]
    query = _scoped(select(AuditEvent), AuditEvent.store_id)
    if action:
        query = query.where(AuditEvent.action == action)
    events, older = _newest_first(query, AuditEvent.id, PAGE * 4)
    actions = db.session.scalars(
        _scoped(select(AuditEvent.action).distinct(), AuditEvent.store_id).order_by(
            AuditEvent.action
        )
    ).all()
    stores = list(db.session.scalars(_scoped(select(Store), Store.id)))
    scope = _scope()
    own_admins = None if scope is None else store_admin_names(db.session, scope)
    return render_template(
        "admin/audit.html",
        events=events,
        actors={e.id: shown_actor(e.actor, own_admins) for e in events},
        older=older,
        action=action,
        actions=actions,
        store_names={s.id: s.name for s in stores},
        subject_links=_subject_links(events, stores),
        form=ConfirmForm(),
    )


def _subject_links(events: list[AuditEvent], stores: list[Store]) -> dict[int, str]:
    """Admin pages of the entries' subjects, by entry id: ``license:<id>``, ``order:<the
    shop's order id>`` (of the entry's store) and ``store:<public id>``, when still there."""
    live = {s.public_id: s.id for s in stores if s.deleted_at is None}
    wanted: dict[tuple[int, str], list[int]] = {}
    links: dict[int, str] = {}
    for event in events:
        kind, _, ref = (event.subject or "").partition(":")
        if kind == "license" and row_id(ref) is not None:
            links[event.id] = url_for("admin_licenses.license_detail", license_id=int(ref))
        elif kind == "store" and ref in live:
            links[event.id] = url_for("admin_views.store_detail", store_id=live[ref])
        elif kind == "order" and ref and event.store_id is not None:
            wanted.setdefault((event.store_id, ref), []).append(event.id)
    if wanted:
        found = db.session.execute(
            select(Order.id, Order.store_id, Order.shop_order_id).where(
                Order.store_id.in_({store_id for store_id, _ in wanted}),
                Order.shop_order_id.in_({ref for _, ref in wanted}),
            )
        )
        for order_id, store_id, shop_order_id in found:
            for event_id in wanted.get((store_id, shop_order_id), []):
                links[event_id] = url_for("admin_views.order_detail", order_id=order_id)
    return links


@bp.post("/orders/<int:order_id>/resend")
@login_required
def resend_order_mail(order_id: int) -> ResponseReturnValue:
    """Mail the buyer their order's keys and links again (audited as the admin)."""
    from connector.mail.service import mail_order_again

    if not ConfirmForm().validate_on_submit():
        abort(400)
    order = db.session.get(Order, order_id)
    if order is None or not _visible(order.store_id):
        abort(404)
    refused = mail_order_again(db.session, order, actor=_admin_name(), action="mail.resent")
    if refused is not None:
        return _order_page(order, resend_refused=refused, status=409)
    return redirect(url_for("admin_views.order_detail", order_id=order.id, resent=1))


LICENSE_ACTIONS = ("revoke", "suspend", "reinstate")


@bp.post("/licenses/<int:license_id>/<action>")
@login_required
def license_action(license_id: int, action: str) -> ResponseReturnValue:
    """Revoke, suspend or reinstate a license from the order page (audited as the admin)."""
    from connector.licensing.admin import change_license

    if action not in LICENSE_ACTIONS or not ConfirmForm().validate_on_submit():
        abort(400)
    license_, store = _visible_license(license_id)
    try:
        change_license(db.session, store, license_.key_encrypted, action, actor=_admin_name())
    except KeygateError as exc:  # 409: a key its order revoked comes back with the order
        db.session.rollback()
        order = db.session.get(Order, license_.order_id)
        if order is None:  # pragma: no cover - a license always has its order
            raise
        return _order_page(order, license_error=exc.detail, status=exc.status)
    return redirect(url_for("admin_views.order_detail", order_id=license_.order_id))


def _admin_name() -> str:
    user: AdminUser = g.admin_user
    return f"admin:{user.username}"


def _visible_stores() -> list[Store]:
    """The stores the signed-in admin may see, oldest first."""
    live = select(Store).where(Store.deleted_at.is_(None))
    return list(db.session.scalars(_scoped(live, Store.id).order_by(Store.id)))


def _visible_store(store_id: int | None) -> Store:
    """The store, if the signed-in admin may see it; else 404 (no such id included)."""
    store = db.session.get(Store, store_id) if store_id is not None else None
    if store is None or store.deleted_at is not None or not _visible(store.id):
        abort(404, "There is no such store: it may have been deleted.")
    return store


def _visible_license(license_id: int) -> tuple[License, Store]:
    """The license and its store, if the signed-in admin may see them; else 404."""
    lic = db.session.get(License, license_id)
    store = db.session.get(Store, lic.store_id) if lic is not None else None
    if lic is None or store is None or not _visible(store.id):
        abort(404)
    return lic, store


def _shown_once(page: str) -> Response:
    """A page that shows a secret or token once: no copy of it may be cached anywhere."""
    response = make_response(page)
    response.headers["Cache-Control"] = "no-store"
    return response


DEFAULT_KEY_FORMAT = KeyFormat()
STORE_FORM = {
    "name": "",
    "url": "",
    "key_prefix": "",
    "key_groups": str(DEFAULT_KEY_FORMAT.groups),
    "key_group_length": str(DEFAULT_KEY_FORMAT.group_length),
}


# The store form's number fields, as its labels name them (and the range the page shows).
NUMBER_FIELDS = {
    "key_groups": "Key groups must be a whole number, 2 to 8",
    "key_group_length": "Characters per group must be a whole number, 3 to 10",
}


def _form_number(values: dict[str, str], name: str) -> int:
    number = whole_number(values[name])
    if number is None:
        raise ValidationFailed(NUMBER_FIELDS[name], field=name)
    return number


@bp.route("/stores/new", methods=["GET", "POST"])
@login_required
def add_store() -> ResponseReturnValue:
    """Register a shop, as `keygate store add` does (admins of every store only). The
    answer shows its webhook secret and admin API token once."""
    _global_only()
    form = ConfirmForm()
    values = dict(STORE_FORM)
    error = refused_field = None
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        values = {name: str(request.form.get(name) or "").strip() for name in STORE_FORM}
        try:
            created = create_store(
                db.session,
                values["name"],
                values["url"],
                key_format=key_format(
                    values["key_prefix"],
                    _form_number(values, "key_groups"),
                    _form_number(values, "key_group_length"),
                ),
                actor=_admin_name(),
            )
        except KeygateError as exc:
            db.session.rollback()
            error, refused_field = exc.detail, exc.extra.get("field")
        else:
            # Rendered here, not redirected to: the secret and token exist only in this answer.
            page = render_template(
                "admin/store_created.html",
                store=created.store,
                details=setup_details(created),
                connect_warning=shop_connection.connect_warning(),
                form=form,
            )
            return _shown_once(page)
    page = render_template(
        "admin/store_new.html",
        values=values,
        error=error,
        refused_field=refused_field,
        form=form,
    )
    return page, (422 if error else 200)


@bp.get("/stores/<int:store_id>")
@login_required
def store_detail(store_id: int) -> ResponseReturnValue:
    """A store: its addresses, its connection to the shop and what can be done about it."""
    return _store_page(_visible_store(store_id))


def _store_page(
    store: Store,
    error: str | None = None,
    status: int = 200,
    refused_field: str | None = None,
    typed: dict[str, str] | None = None,
    offer_shop_gone: bool = False,
) -> ResponseReturnValue:
    """The store's page; ``refused_field``: the field a refused form's ``error`` is about;
    ``typed``: the name and URL as the refused form sent them, to correct;
    ``offer_shop_gone``: a disconnect failed, the shop not answering: offer to forget its
    key anyway."""
    page = render_template(
        "admin/store.html",
        store=store,
        typed=typed or {"name": store.name, "url": store.url},
        connection=shop_connection.connection_report(db.session, store),
        storage_area=own_area(store.id),
        storage=storage_in_use(store),
        mail_route=mail_route(store),
        last_delivery=attention.latest_delivery(db.session, store),
        rest_key=has_credentials(db.session, store, "woocommerce"),
        storage_failure=attention.storage_failure(db.session, store),
        dead_jobs=attention.dead_jobs(db.session, store),
        dead_jobs_link=attention.dead_jobs_link(store),
        last_accepted=db.session.scalars(
            select(WebhookDelivery.received_at)
            .where(WebhookDelivery.store_id == store.id, WebhookDelivery.outcome != BAD_SIGNATURE)
            .order_by(WebhookDelivery.id.desc())
            .limit(1)
        ).first(),
        error=error,
        refused_field=refused_field,
        form=ConfirmForm(),
        may_delete=_scope() is None,
        offer_shop_gone=offer_shop_gone,
    )
    return page, status


@bp.post("/stores/<int:store_id>/change")
@login_required
def change_store_details(store_id: int) -> ResponseReturnValue:
    """Correct the store's name or its shop's URL (a typo, the address the shop redirects
    to); a registration of the webhooks that failed is tried again at the new address. An
    admin of one store changes the name only."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    store = _visible_store(store_id)
    typed = {name: str(request.form.get(name) or "").strip() for name in ("name", "url")}
    if _scope() is not None:
        # Where Keygate's server sends the shop's key and requests: set by the admins who
        # add stores, never by an admin of one store (it could point them anywhere).
        typed["url"] = store.url
    try:
        if change_store(db.session, store, typed["name"], typed["url"], actor=_admin_name()):
            shop_connection.retry_registration_now(db.session, store)
    except KeygateError as exc:
        db.session.rollback()
        return _store_page(
            store,
            error=f"Not changed: {exc.detail}.",
            status=exc.status,
            refused_field=exc.extra.get("field"),
            typed=typed,
        )
    return redirect(url_for("admin_views.store_detail", store_id=store.id, changed=1))


@bp.get("/stores/<int:store_id>/licenses.csv")
@login_required
def store_licenses_csv(store_id: int) -> ResponseReturnValue:
    """Every license of the store as CSV (the admin API's ``/licenses.csv``)."""
    store = _visible_store(store_id)
    return license_csv_response(db.session, store.id, f"licenses-{store.public_id}.csv")


@bp.post("/stores/<int:store_id>/delete")
@login_required
def delete_store(store_id: int) -> ResponseReturnValue:
    """Delete the store and everything kept for it (admins of every store only; the box
    ticked and the store id typed again)."""
    _global_only()
    form = DeleteStoreForm()
    if not form.validate_on_submit():
        abort(400)
    store = _visible_store(store_id)
    if str(form.store_id.data).strip() != store.public_id:  # a confirmation, not a secret
        return _store_page(
            store,
            error="Not deleted: the store id typed does not match this store's.",
            status=422,
            refused_field="store_id",
        )
    name = store.name
    try:
        done = store_deletion.delete_store(db.session, store, actor=_admin_name())
    except NotFound:  # deleted by another request meanwhile
        db.session.rollback()
        abort(404)
    except KeygateError as exc:  # 409: buyers still to be taken out of its Brevo list
        db.session.rollback()
        return _store_page(store, error=exc.detail, status=exc.status)
    return render_template("admin/store_deleted.html", name=name, done=done, form=ConfirmForm())


@bp.post("/stores/<int:store_id>/disconnect")
@login_required
def disconnect_store(store_id: int) -> ResponseReturnValue:
    """Delete Keygate's webhooks in the shop and forget its key (DELETE /connection)."""
    if not ConfirmedForm().validate_on_submit():
        abort(400)
    store = _visible_store(store_id)
    # Asked for after a disconnect failed: the owner says the shop is gone for good.
    shop_gone = request.form.get("shop_gone") == "1"
    try:
        done = shop_connection.disconnect(
            db.session, store, actor=_admin_name(), shop_gone=shop_gone
        )
    except ServiceUnavailable as exc:  # the shop is down: nothing changed
        db.session.rollback()
        return _store_page(store, error=exc.detail, status=exc.status, offer_shop_gone=True)
    return redirect(
        url_for(
            "admin_views.store_detail",
            store_id=store.id,
            disconnected=len(done.deleted),
            left=len(done.left) or None,
        )
    )


@bp.post("/stores/<int:store_id>/token")
@login_required
def replace_store_token(store_id: int) -> ResponseReturnValue:
    """A new admin API token for the store, shown once; the old one stops working."""
    form = ConfirmedForm()
    if not form.validate_on_submit():
        abort(400)
    store = _visible_store(store_id)
    token = replace_api_token(db.session, store, actor=_admin_name())
    page = render_template(
        "admin/store_token.html",
        store=store,
        shown={"api_token": token},
        title="New admin API token",
        note="The previous token no longer works.",
        form=form,
    )
    return _shown_once(page)


@bp.post("/stores/<int:store_id>/webhook-secret")
@login_required
def replace_webhook_secret(store_id: int) -> ResponseReturnValue:
    """A new webhook secret: Keygate registers its webhooks again when it can, else the new
    secret is shown once, to paste into the shop's webhooks."""
    form = ConfirmedForm()
    if not form.validate_on_submit():
        abort(400)
    store = _visible_store(store_id)
    try:
        secret = shop_connection.replace_webhook_secret(db.session, store, actor=_admin_name())
    except ServiceUnavailable as exc:  # the shop refuses Keygate's key: nothing changed
        db.session.rollback()
        return _store_page(store, error=exc.detail, status=exc.status)
    if secret is None:
        return redirect(url_for("admin_views.store_detail", store_id=store.id, reregistering=1))
    page = render_template(
        "admin/store_token.html",
        store=store,
        shown={"webhook_secret": secret},
        title="New webhook secret",
        note="Paste it into each of the store's webhooks in WooCommerce (Settings → Advanced →"
        " Webhooks, the four pointing at this store): deliveries signed with the previous"
        " secret are refused from now on.",
        form=form,
    )
    return _shown_once(page)


@bp.route("/stores/<int:store_id>/credentials", methods=["GET", "POST"])
@login_required
@credential_checks
def store_credentials(store_id: int) -> ResponseReturnValue:
    """R2, Brevo and WooCommerce settings of a store: secrets write-only (blank keeps the
    stored one). Saved as PUT /api/v1/admin/credentials/<kind> saves them: a WooCommerce
    key given by hand connects the store; R2 and Brevo settings are tried once saved, and
    again with the form's Check button (``action=check``)."""
    store = _visible_store(store_id)
    form = ConfirmForm()
    error = None
    refused_field = None
    status = 200
    saved = None
    checks: dict[str, CheckResult] = {}
    # A refused form's fields as typed, secrets left out (never echoed into a page).
    typed: dict[str, dict[str, str]] = {}
    if request.method == "POST":
        kind = request.form.get("kind", "")
        if not form.validate_on_submit() or kind not in FIELDS:
            abort(400)
        if request.form.get("action") == "check":
            if not checkable(kind):
                abort(400)
            try:
                checks[kind] = check_credentials(db.session, store, kind)
            except NotFound as exc:
                error, status = exc.detail, 404
        else:
            saved, error, refused_field = _save_credentials(store, kind, typed)
            if error is not None:
                status = 422
            elif checkable(kind):
                checks[kind] = check_credentials(db.session, store, kind)
    current = {
        kind: masked(kind, credentials_for(db.session, store, kind) or {}) for kind in FIELDS
    }
    return render_template(
        "admin/credentials.html",
        store=store,
        fields=FIELDS,
        current=current,
        connection=shop_connection.connection_of(db.session, store),
        form=form,
        error=error,
        saved=saved,
        typed=typed,
        refused_field=refused_field,
        checks=checks,
        checkable=CHECKED_KINDS,
    ), status


def _save_credentials(
    store: Store, kind: str, typed: dict[str, dict[str, str]]
) -> tuple[str | None, str | None, str | None]:
    """Save the form's ``kind`` settings: (the kind saved, None, None), or (None, why not,
    the field it is about when one is named) with what was typed put in ``typed`` (secrets
    left out)."""
    raw: dict[str, Any] = {}
    for name, spec in FIELDS[kind].items():
        value = (request.form.get(name) or "").strip()
        if value and spec.kind is int:
            # Not a number: passed on as text, for parse_credentials' own 422.
            number = whole_number(value)
            raw[name] = number if number is not None else value
        elif value:
            raw[name] = value
    try:
        values = parse_credentials(kind, raw)
        shop_connection.save_credentials(db.session, store, kind, values, actor=_admin_name())
    except KeygateError as exc:
        db.session.rollback()
        typed[kind] = {
            name: str(request.form.get(name) or "").strip()
            for name, spec in FIELDS[kind].items()
            if not spec.secret
        }
        return None, exc.detail, exc.extra.get("field")
    return kind, None, None
